"""trainer/logs.py: levels take effect on loggers made before setup as well as after."""

import logging

from trainer import logs


def test_setup_levels_reach_loggers_that_cached_the_old_level(tmp_path):
    # setup sets the levels without Logger.setLevel (whose registry walk a logging signal
    # handler could break) and clears each logger's cached answer itself: a logger asked
    # before setup must not keep its old answer.
    early = logging.getLogger("trainer.test_logs.early")
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    logging.getLogger().setLevel(logging.WARNING)  # (each setLevel clears every cache)
    assert logging.getLogger("botocore").isEnabledFor(logging.DEBUG)
    assert not early.isEnabledFor(logging.INFO)  # cached now: INFO off
    logs.setup(tmp_path / "x.log")
    assert early.isEnabledFor(logging.INFO)
    assert not logging.getLogger("botocore").isEnabledFor(logging.INFO)
    early.info("reaches the file")
    logs.flush()
    assert "reaches the file" in (tmp_path / "x.log").read_text()
