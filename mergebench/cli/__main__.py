"""``python -m mergebench.cli ...`` (what ``accelerate launch -m mergebench.cli train ...`` runs on every process)."""

from mergebench.cli import main

main()
