"""Text generation with the semantics of Hugging Face's `generate`: greedy, sampling, beams.

One `GenerationConfig` (config.py) carries every setting, validated once, from the command
line, a run's `sample:` section, the server or Python to the decoders:

    config.py          GenerationConfig: the settings, their defaults and their checks
    logits_process.py  the processors that reshape next-token scores (transformers' classes)
    decoding.py        what the decoders share: prompt rows, cached scores, generators
    sampling.py        generate_tokens / generate_steps (greedy/sampled, streaming, with the
                       log-probabilities drawn from) and generate (HF's return)
    logprobs.py        per-token log-probability records; a prompt's under the raw model
    beam.py            beam_search (and beam sampling)
    text.py            sample_text: prompts and texts, banned words, stop strings, streaming

Kept light (no imports) so that `gptkit.config` can load the settings class without torch.
"""
