"""Webhook notifications: told of every transition and alert, sent without delaying a drain.

    config.py   the ``notify:`` section (webhooks, their headers, triggers and format)
    notice.py   what happened, as one value, and its JSON and Slack bodies (pure)
    outbox.py   the bounded queue, its file in ``state_dir``, one worker thread that
                delivers with a timeout per attempt and retries for a bounded time

Importing this package loads neither httpx nor tenacity: ``drainer.config`` imports the
configuration models from here, and ``drainer --help`` must stay light.
"""
