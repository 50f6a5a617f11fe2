"""A recording stand-in for ``kfrelease.training.trigger.trigger`` used only by test_receiver.py to test the
receiver's own rules (rate limit, one retrain at a time, recording) without running a training pipeline.
The end-to-end test (test_alerting.py) goes through the real trigger path."""

import json
import os
import threading
import time

CALLS_FILE_ENV = "KFRELEASE_TEST_TRIGGER_CALLS"
release = threading.Event()


def trigger(settings, commit, repo, kfp_host=None, auto=False, reason=""):
    release.wait(timeout=10)
    with open(os.environ[CALLS_FILE_ENV], "a") as fh:
        fh.write(
            json.dumps(
                {
                    "commit": commit,
                    "repo": repo,
                    "auto": auto,
                    "reason": reason,
                    "t": time.time(),
                }
            )
            + "\n"
        )
    return {"run_id": "recorded", "auto": auto}
