"""Blind comparison of models (the arena): the votes store (`store`), the ranking computed
from the votes (`ranking`: win rates with Wilson intervals, Bradley-Terry strengths) and the
report `gptkit arena` prints and draws (`report`). The server's routes are in
`gptkit.serve.arena`."""
