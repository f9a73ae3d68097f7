"""``python -m drainer``: the same as the ``drainer`` command."""

from drainer.early import main  # holds an early SIGHUP (see drainer.early), then the CLI

if __name__ == "__main__":
    main()
