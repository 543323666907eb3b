#!/usr/bin/env bash
# The training instance's bootstrap (Amazon Linux 2023, root). DESIGN.md section 5.
#
# Two files by concern: this one (settings, set-up, the mode switch) and bootstrap-run.sh (a run's
# life: its record, its container, the other modes). They travel as one text, bootstrap-run.sh
# first: the user data, deploy's update and the installed copy. In a checkout, this file sources
# bootstrap-run.sh from beside itself.
#
# Contract with infra/: the instance's user data is
#     #!/bin/bash
#     export AVE_BUCKET=... AVE_REGION=... AVE_REPO_URL=... AVE_LOG_GROUP=... AVE_MAX_RUN_HOURS=... AVE_IDLE_MINUTES=...
#     <the full text of bootstrap-run.sh, then of this file>
# so cloud-init runs it once, at the first boot, with no arguments.
#
# Modes:
#   bootstrap.sh [setup]
#       Boot-time set-up, idempotent. A failure stops the instance (nothing idles for money).
#       The watchdog first (this script's copy and the timer), then Docker (dnf); the AVE_* settings
#       to /etc/av-emotion/stack.env (0600 root; settings come from the environment, else from
#       that file); installs both files as one, /usr/local/sbin/ave-bootstrap, and the systemd units:
#         ave-resume.service     at every boot: resumes the current run, if one was interrupted
#         ave-watch.service      waits for the run's container to exit, then finishes the run
#         ave-watchdog.timer     every minute: stops the instance after AVE_IDLE_MINUTES with no
#                                run container, stops a run past AVE_MAX_RUN_HOURS (from the
#                                run's first start, resumes included), and stops
#                                the run gracefully on a spot interruption notice (a backstop:
#                                the trainer polls for it itself, AVE_WATCH_SPOT=1)
#   AVE_IDLE_MINUTES=.. AVE_MAX_RUN_HOURS=.. bootstrap.sh update      (operator: deploy, SSM)
#       The set-up again from a newer copy of the script (deploy fetches it from S3), with the
#       settings given (the rest from stack.env): cloud-init runs user data once, so this is how
#       a changed script or setting reaches an existing instance. No resume, no stop on failure.
#   bootstrap.sh run [--image REPO@sha256:DIGEST] RUN_ID [trainer train args...]   (operator, SSM)
#       Logs in to ECR with the instance role, pulls the image (deploy gives the digest it pushed;
#       else $AVE_REPO_URL:latest), records the run and the image's digest in
#       /var/lib/av-emotion/current-run, starts the container `ave-run` detached:
#           train --data s3://$AVE_BUCKET/data/ --out s3://$AVE_BUCKET/runs/RUN_ID/ [args...]
#       with its output sent to CloudWatch Logs (group $AVE_LOG_GROUP, stream RUN_ID), starts
#       ave-watch.service, and returns. When the container exits, the watcher moves the record
#       to /var/lib/av-emotion/last-run (with EXIT_CODE and OUTCOME) and stops the instance,
#       except: exit 143 without a stop request (SIGTERM from a spot interruption or a shutdown;
#       the trainer saved a checkpoint), or any exit after a spot notice (137: the checkpoint
#       outlasted the grace period), keeps the record and leaves the stop to EC2 (so a spot
#       request restarts the instance), and the next boot resumes the run: with --resume when
#       its S3 run directory holds checkpoints/last.pt, else from the start. A run whose
#       `docker run` fails keeps no record. AVE_MAX_RUN_HOURS counts from the run's first start.
#   bootstrap.sh stop                                      (operator: REPLACE)
#       Stops the run gracefully (`docker stop --time 120 ave-run`: SIGTERM, the trainer saves a
#       checkpoint and exits 143) and ends it: the record is cleared, its artifacts stay in S3,
#       and the instance keeps running for the next `run` (the idle watchdog stops it otherwise).
#   bootstrap.sh status                                    prints the current and last run
#   bootstrap.sh resume | watch | watchdog                 used by the systemd units above
#
# Exit status: 0 done (also: nothing to do); 1 failed (Docker, ECR, pull, start: a run whose
# `docker run` failed keeps no record, so no boot "resumes" it); 2 usage or
# missing settings; 3 `run` refused because a run is going (use `stop` first).
# Files: /etc/av-emotion/stack.env, /var/lib/av-emotion/{current-run,last-run,stop-reason},
# /run/av-emotion/idle-since, /usr/local/sbin/ave-bootstrap, /etc/systemd/system/ave-*.
# No secret is stored or printed: ECR's password goes through a pipe, and the instance role
# gives the container its AWS credentials through IMDS (hop limit 2, set by infra).
set -euo pipefail

# The AVE_*_DIR and AVE_INSTALLED overrides exist for a dry run away from an instance.
ETC_DIR="${AVE_ETC_DIR:-/etc/av-emotion}"
STATE_DIR="${AVE_STATE_DIR:-/var/lib/av-emotion}"
RUN_DIR="${AVE_RUNTIME_DIR:-/run/av-emotion}"
STACK_ENV="$ETC_DIR/stack.env"
CURRENT="$STATE_DIR/current-run"
LAST="$STATE_DIR/last-run"
STOP_REASON="$STATE_DIR/stop-reason"
IDLE_SINCE="$RUN_DIR/idle-since"
INSTALLED="${AVE_INSTALLED:-/usr/local/sbin/ave-bootstrap}"
UNIT_DIR="${AVE_UNIT_DIR:-/etc/systemd/system}"
CONTAINER=ave-run
STOP_SECONDS=120
SETTINGS=(AVE_BUCKET AVE_REGION AVE_REPO_URL AVE_LOG_GROUP AVE_MAX_RUN_HOURS AVE_IDLE_MINUTES)
: "${HOME:=/root}"   # cloud-init and systemd may leave HOME unset; docker keeps its config there
export HOME

say() { echo "ave-bootstrap: $*"; }
die() { local code="${2:-1}"; echo "ave-bootstrap: ERROR: $1" >&2; exit "$code"; }
need_root() { [[ $EUID -eq 0 ]] || die "must run as root" 2; }

# A run's life: already defined above this text when the two files came as one, else beside it.
RUN_PART=""
if ! declare -F mode_run >/dev/null; then
    RUN_PART="$(dirname "${BASH_SOURCE[0]}")/bootstrap-run.sh"
    # shellcheck source=SCRIPTDIR/bootstrap-run.sh
    source "$RUN_PART"
fi

# --- settings -----------------------------------------------------------------------------------
# The environment wins (the user data's export line), then stack.env; numbers have defaults.
load_settings() {
    local name value
    if [[ -f "$STACK_ENV" ]]; then
        while IFS='=' read -r name value; do
            [[ "$name" =~ ^AVE_[A-Z_]+$ ]] || continue
            [[ -n "${!name:-}" ]] || printf -v "$name" '%s' "$value"
        done <"$STACK_ENV"
    fi
    : "${AVE_MAX_RUN_HOURS:=24}" "${AVE_IDLE_MINUTES:=30}"
    for name in "${SETTINGS[@]}"; do
        value="${!name:-}"
        [[ -n "$value" ]] || die "$name is not set (user data export line, or $STACK_ENV)" 2
        # Plain values only, so stack.env reads the same in bash and in systemd.
        [[ "$value" =~ ^[A-Za-z0-9._:/@+-]+$ ]] || die "$name has an unexpected character: $value" 2
    done
    [[ "$AVE_MAX_RUN_HOURS" =~ ^[0-9]+$ ]] || die "AVE_MAX_RUN_HOURS must be whole hours" 2
    [[ "$AVE_IDLE_MINUTES" =~ ^[0-9]+$ ]] || die "AVE_IDLE_MINUTES must be whole minutes" 2
}

write_settings() {
    local name tmp
    install -d -m 0700 "$ETC_DIR"
    tmp="$(mktemp "$ETC_DIR/.stack.env.XXXXXX")"
    for name in "${SETTINGS[@]}"; do printf '%s=%s\n' "$name" "${!name}"; done >"$tmp"
    chmod 0600 "$tmp" && mv -f "$tmp" "$STACK_ENV"
    say "settings written to $STACK_ENV"
}

stop_instance() {
    say "stopping the instance: $1"
    sync
    shutdown -h now "av-emotion: $1" || true
}

# --- set-up (modes setup and update) --------------------------------------------------------------
# A failed first boot would leave an instance up, and paid for, with nothing to stop it.
setup_failed() {  # EXIT trap of the first boot's setup
    local code="$1"
    ((code != 0)) || return 0
    echo "ave-bootstrap: ERROR: first-boot setup failed (exit $code)" >&2
    stop_instance "first-boot setup failed (exit $code)"
}

# The copy the units run, as one text: a checkout's two files, or the text this came in without
# the user data's lines above it (the first shebang is bootstrap-run.sh's).
install_self() {
    local self="${BASH_SOURCE[0]}" tmp
    tmp="$(mktemp)"
    if [[ -n "$RUN_PART" ]]; then
        cat "$RUN_PART" "$self" >"$tmp"
    else
        sed -n '/^#!\/usr\/bin\/env bash/,$p' "$self" >"$tmp"
    fi
    [[ -s "$tmp" ]] || cp "$self" "$tmp"
    install -m 0755 "$tmp" "$INSTALLED" && rm -f "$tmp"
}

mode_setup() {  # [update]
    need_root
    local update="${1:-}"
    [[ -n "$update" ]] || trap 'setup_failed $?' EXIT
    load_settings
    write_settings
    install -d -m 0700 "$STATE_DIR"
    install_self

    # The watchdog first: whatever fails after this, the idle stop still comes.
    install -d "$UNIT_DIR"
    cat >"$UNIT_DIR/ave-watchdog.service" <<EOF
[Unit]
Description=av-emotion: idle and maximum-run-time watchdog
After=docker.service

[Service]
Type=oneshot
ExecStart=$INSTALLED watchdog
EOF
    cat >"$UNIT_DIR/ave-watchdog.timer" <<EOF
[Unit]
Description=av-emotion: run the watchdog every minute

[Timer]
OnBootSec=1min
OnUnitActiveSec=1min
AccuracySec=10s

[Install]
WantedBy=timers.target
EOF
    systemctl daemon-reload
    systemctl enable --now ave-watchdog.timer

    if ! command -v docker >/dev/null 2>&1; then
        say "installing docker (dnf)"
        dnf install -y -q docker || die "dnf install docker failed"
    fi
    # docker stop on shutdown must wait for the trainer's checkpoint (--stop-timeout 120).
    install -d "$UNIT_DIR/docker.service.d"
    printf '[Service]\nTimeoutStopSec=%s\n' "$((STOP_SECONDS + 60))" >"$UNIT_DIR/docker.service.d/ave-stop-timeout.conf"

    cat >"$UNIT_DIR/ave-resume.service" <<EOF
[Unit]
Description=av-emotion: resume the interrupted training run, if any
Wants=network-online.target docker.service
After=network-online.target docker.service

[Service]
Type=oneshot
ExecStart=$INSTALLED resume

[Install]
WantedBy=multi-user.target
EOF
    # After=docker.service: at shutdown the watcher stops first, so a run that is stopped by the
    # shutdown (exit 143) keeps its record and resumes at the next boot.
    cat >"$UNIT_DIR/ave-watch.service" <<EOF
[Unit]
Description=av-emotion: wait for the training container, then finish the run
Requires=docker.service
After=docker.service

[Service]
Type=simple
ExecStart=$INSTALLED watch
Restart=on-failure
RestartSec=30
EOF
    systemctl daemon-reload
    systemctl enable --now docker.service
    systemctl enable ave-resume.service
    if [[ -n "$update" ]]; then
        say "updated: $INSTALLED, $STACK_ENV (idle ${AVE_IDLE_MINUTES} min, max ${AVE_MAX_RUN_HOURS} h), the units"
        return 0
    fi
    # --no-block: cloud-init runs this inside the boot transaction.
    systemctl start --no-block ave-resume.service
    trap - EXIT
    say "set up: ave-watchdog.timer, docker, $STACK_ENV, $INSTALLED, ave-resume.service, ave-watch.service"
}

case "${1:-setup}" in
    setup) mode_setup ;;
    update) mode_setup update ;;
    run) shift; mode_run "$@" ;;
    stop) mode_stop ;;
    status) mode_status ;;
    resume) mode_resume ;;
    watch) mode_watch ;;
    watchdog) mode_watchdog ;;
    -h | --help | help) sed -n '/^# The training instance.s bootstrap/,/^set -euo/p' "${BASH_SOURCE[0]}" \
        | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown mode '$1' (setup, update, run, stop, status, resume, watch, watchdog)" 2 ;;
esac
