from trainer.runtime_env import apply

apply()  # before torch loads: its CPU libraries read these settings once (trainer.runtime_env)

from trainer.cli import main  # noqa: E402

raise SystemExit(main())
