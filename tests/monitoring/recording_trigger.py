"""A recording stand-in for ``kfrelease.training.trigger.start_auto_revision`` used only by test_receiver.py to test the
receiver's own rules (rate limit, one retrain at a time, recording) without running a training pipeline.
The end-to-end test (test_alerting.py) goes through the real trigger path."""

import json
import os
import threading
import time

CALLS_FILE_ENV = "KFRELEASE_TEST_TRIGGER_CALLS"
release = threading.Event()


def start_auto_revision(settings, model, reason):
    release.wait(timeout=10)
    with open(os.environ[CALLS_FILE_ENV], "a") as fh:
        fh.write(json.dumps({"model": model, "auto": True, "reason": reason, "t": time.time()}) + "\n")
    return {"run_id": "recorded", "auto": True}
