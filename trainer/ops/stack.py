"""The Pulumi stack in infra/, driven through the Automation API (the Pulumi CLI does the work).

    cd infra && pulumi stack init dev       # once, by hand (pulumi login first)
    python -m trainer deploy                # `pulumi up` on the stack named in deploy.yaml
    python -m trainer destroy               # `pulumi destroy`, after a confirmation

``outputs`` only reads the stack (no change); ``up`` and ``destroy`` change it. The errors of a
first day (no CLI, not logged in, no stack yet, nothing deployed) become one line with what to do.
"""

from __future__ import annotations

import shutil
import subprocess

from trainer.ops import OpsError
from trainer.ops.settings import Settings

OUTPUTS = ("bucket", "repository_url", "instance_id", "log_group", "region")
# Read when there (deploy sends them to the instance); a stack last updated before they were
# exported lacks them until its next `pulumi up`, which deploy runs first.
OPTIONAL_OUTPUTS = ("idle_minutes", "max_run_hours",
                    # AWS Batch (infra/batch.py): many runs at once, `make deploy FOLDS=5`
                    "batch_job_queue", "batch_job_definition", "batch_job_definition_name",
                    "batch_compute_environment", "batch_max_vcpus", "batch_vcpus",
                    "batch_memory_mib")
INSTALL = ("install the Pulumi CLI (curl -fsSL https://get.pulumi.com | sh, or brew install "
           "pulumi), then `pulumi login` (or `pulumi login --local`)")


def require_cli() -> str:
    """The path of the Pulumi CLI, which the Automation API runs; OpsError if there is none."""
    path = shutil.which("pulumi")
    if not path:
        raise OpsError(f"the Pulumi CLI is not installed (no `pulumi` on PATH): {INSTALL}")
    return path


def workspace_args(settings: Settings) -> dict:
    """What ``pulumi.automation.select_stack`` gets: the stack, and the program's folder."""
    return {"stack_name": settings.stack, "work_dir": settings.infra_dir}


def _command_error(e: Exception, settings: Settings) -> OpsError:
    """The CLI's own error lines, without the wrapper's stdout dump; hints for known ones."""
    text = str(e)
    if "PULUMI_ACCESS_TOKEN" in text or "not logged in" in text.lower():
        return OpsError(f"the Pulumi CLI is not logged in to a state backend: run `pulumi login` "
                        "(Pulumi Cloud) or `pulumi login --local` (state in ~/.pulumi), then "
                        f"`cd infra && pulumi stack init {settings.stack}`")
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() and ln.strip()]
    brief = " / ".join(lines[-3:]) if lines else " ".join(text.split())[:300]
    return OpsError(f"pulumi failed on stack {settings.stack!r}: {brief[:500]}")


def select(settings: Settings):
    """The stack (``pulumi.automation.Stack``) of ``settings.stack`` in ``settings.infra_dir``."""
    require_cli()
    from pulumi import automation as auto  # Pulumi (the ops extra): slow to import

    try:
        return auto.select_stack(**workspace_args(settings))
    except auto.StackNotFoundError:
        raise OpsError(f"there is no Pulumi stack {settings.stack!r} yet: run `cd infra && pulumi "
                       f"stack init {settings.stack}` once (config keys: infra/Pulumi.yaml), then "
                       "this command again") from None
    except auto.errors.InvalidVersionError as e:
        raise OpsError(f"the Pulumi CLI is too old for the Automation API ({e}): upgrade it "
                       "(pulumi version; curl -fsSL https://get.pulumi.com | sh)") from None
    except auto.CommandError as e:
        raise _command_error(e, settings) from None
    except (OSError, subprocess.CalledProcessError) as e:
        raise OpsError(f"the Pulumi CLI did not run ({e}): {INSTALL}") from None


def outputs(settings: Settings, stack=None) -> dict:
    """The stack's outputs (bucket, repository_url, instance_id, log_group, region); OpsError
    when the stack has never been deployed."""
    from pulumi import automation as auto  # Pulumi (the ops extra): slow to import

    stack = stack or select(settings)
    try:
        values = {k: v.value for k, v in stack.outputs().items()}
    except auto.CommandError as e:
        raise _command_error(e, settings) from None
    missing = [k for k in OUTPUTS if not values.get(k)]
    if missing:
        raise OpsError(f"stack {settings.stack!r} has not been deployed (no outputs "
                       f"{', '.join(missing)}): run `make deploy` first")
    return {k: values[k] for k in OUTPUTS + OPTIONAL_OUTPUTS if k in values}


def deployed(settings: Settings) -> dict | None:
    """The outputs, or None if the stack has not been deployed yet (the first deploy)."""
    try:
        return outputs(settings)
    except OpsError as e:
        if "has not been deployed" in str(e):
            return None
        raise


def up(settings: Settings, on_output=print) -> dict:
    """``pulumi up`` (creates or updates the stack, prints its progress); the outputs."""
    from pulumi import automation as auto  # Pulumi (the ops extra): slow to import

    stack = select(settings)
    try:
        stack.up(on_output=on_output)
    except auto.CommandError as e:
        raise _command_error(e, settings) from None
    return outputs(settings, stack)


def destroy(settings: Settings, on_output=print, stack=None) -> None:
    """``pulumi destroy``: first forceDestroy=true through an update, so that a bucket with runs
    and a repository with images can be deleted (the provider reads the flag from the state).

    The flag is put back as it was in a ``finally``, whether the destroy worked or not: left
    set, a failed destroy would leave a stack whose next `pulumi up` makes the bucket deletable,
    and a stack made again after a destroy would start out deletable."""
    from pulumi import automation as auto  # Pulumi (the ops extra): slow to import

    stack = stack or select(settings)
    key = "forceDestroy"
    try:
        before = next((value for name, value in stack.get_all_config().items()
                       if name.rsplit(":", 1)[-1] == key), None)  # "PROJECT:forceDestroy"
        stack.set_config(key, auto.ConfigValue("true"))
        try:
            stack.up(on_output=on_output)
            stack.destroy(on_output=on_output)
        finally:
            try:
                if before is None:
                    stack.remove_config(key)
                else:
                    stack.set_config(key, before)
            except auto.CommandError as e:
                raise OpsError(f"{key} is still true in stack {settings.stack!r} "
                               f"({_command_error(e, settings)}): put it back with `cd infra && "
                               f"pulumi config rm {key}`") from None
    except auto.CommandError as e:
        raise _command_error(e, settings) from None
