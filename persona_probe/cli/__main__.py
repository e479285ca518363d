"""``python -m persona_probe.cli`` (and ``torchrun … -m persona_probe.cli``): the same app as the
``persona-probe`` console script."""

from persona_probe.cli import main

main()
