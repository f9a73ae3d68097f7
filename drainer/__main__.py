"""``python -m drainer``: the same as the ``drainer`` command."""

from drainer.cli import main

if __name__ == "__main__":
    main()
