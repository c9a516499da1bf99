"""`python -m gptkit` (what torchrun launches: `torchrun ... -m gptkit train`)."""

from gptkit.cli import main

if __name__ == "__main__":
    main()
