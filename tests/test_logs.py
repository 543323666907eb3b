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


def test_a_run_folder_about_to_go_loses_its_log_handlers(tmp_path):
    """RunDir.close removes an s3:// run's staging folder; the train.log handler in it must go
    first, or a later record (the same process training again) opens the file anew there."""
    import shutil

    from trainer.store.rundir import detach_file_logs

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        logs.setup(tmp_path / "staging" / "train.log")
        logging.getLogger("t").info("during")
        detach_file_logs(tmp_path / "staging")
        shutil.rmtree(tmp_path / "staging")
        assert not [h for h in root.handlers if getattr(h, "baseFilename", None)]
        logging.getLogger("t").info("after")
        assert not (tmp_path / "staging").exists()
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in before:
            root.addHandler(h)
