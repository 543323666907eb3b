#!/usr/bin/env bash
# The training instance's bootstrap (Amazon Linux 2023, root). DESIGN.md section 5.
#
# Contract with infra/: the instance's user data is
#     #!/bin/bash
#     export AVE_BUCKET=... AVE_REGION=... AVE_REPO_URL=... AVE_LOG_GROUP=... AVE_MAX_RUN_HOURS=... AVE_IDLE_MINUTES=...
#     <this file's full text>
# so cloud-init runs it once, at the first boot, with no arguments.
#
# Modes:
#   bootstrap.sh [setup]
#       Boot-time set-up, idempotent. A failure stops the instance (nothing idles for money).
#       The watchdog first (this script's copy and the timer), then Docker (dnf); the AVE_* settings
#       to /etc/av-emotion/stack.env (0600 root; settings come from the environment, else from
#       that file); installs this script as /usr/local/sbin/ave-bootstrap and the systemd units:
#         ave-resume.service     at every boot: resumes the current run, if one was interrupted
#         ave-watch.service      waits for the run's container to exit, then finishes the run
#         ave-watchdog.timer     every minute: stops the instance after AVE_IDLE_MINUTES with no
#                                run container, stops a run past AVE_MAX_RUN_HOURS (from the
#                                run's first start, resumes included), and stops
#                                the run gracefully on a spot interruption notice (a backstop:
#                                the trainer polls for it itself, AVE_WATCH_SPOT=1)
#   AVE_IDLE_MINUTES=.. AVE_MAX_RUN_HOURS=.. bootstrap.sh update      (operator: deploy, SSM)
#       The set-up again from a newer copy of this script (deploy fetches it from S3), with the
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

# --- run records --------------------------------------------------------------------------------
# A record is bash: RUN_ID, RUN_IMAGE (REPO@sha256:DIGEST: a resume pulls exactly that, never a
# moving tag), RUN_IMAGE_ID (the local image), RUN_STARTED_AT, RUN_STARTED_S (the run's start in
# epoch seconds: AVE_MAX_RUN_HOURS counts from it, across resumes) and the array RUN_ARGS.
write_record() {  # RUN_ID IMAGE IMAGE_ID ARGS...
    local id="$1" image="$2" image_id="$3" tmp now
    shift 3
    now="$(date +%s)"
    install -d -m 0700 "$STATE_DIR"
    tmp="$(mktemp "$STATE_DIR/.current-run.XXXXXX")"
    {
        printf 'RUN_ID=%q\nRUN_IMAGE=%q\nRUN_IMAGE_ID=%q\nRUN_STARTED_AT=%q\nRUN_STARTED_S=%q\nRUN_ARGS=(' \
            "$id" "$image" "$image_id" "$(date -u -d "@$now" +%FT%TZ)" "$now"
        (($# == 0)) || printf ' %q' "$@"
        printf ' )\n'
    } >"$tmp"
    mv -f "$tmp" "$CURRENT"
}

read_record() {  # sets RUN_ID RUN_IMAGE RUN_STARTED_AT RUN_STARTED_S RUN_ARGS; fails if none
    RUN_ID="" RUN_IMAGE="" RUN_IMAGE_ID="" RUN_STARTED_AT="" RUN_STARTED_S="" RUN_ARGS=()
    [[ -f "$CURRENT" ]] || return 1
    # shellcheck source=/dev/null
    source "$CURRENT"
    [[ -n "$RUN_ID" ]]
}

# When the current run started, in epoch seconds: the record's (a record from before
# RUN_STARTED_S: its RUN_STARTED_AT), else the container's start.
run_started() {
    local when="$RUN_STARTED_S"
    if [[ ! "$when" =~ ^[0-9]+$ ]]; then
        when="$(date -d "${RUN_STARTED_AT:-x}" +%s 2>/dev/null)" \
            || when="$(date -d "$(docker inspect -f '{{.State.StartedAt}}' "$CONTAINER")" +%s)"
    fi
    echo "$when"
}

past_max_hours() {  # NOW: whether the current run has run AVE_MAX_RUN_HOURS since it started
    ((AVE_MAX_RUN_HOURS > 0 && $1 - $(run_started) >= AVE_MAX_RUN_HOURS * 3600))
}

container_state() {  # running, exited, ... or none (some clients print a blank line on failure)
    local state
    if state="$(docker inspect -f '{{.State.Status}}' "$CONTAINER" 2>/dev/null)" && [[ -n "$state" ]]; then
        echo "$state"
    else
        echo none
    fi
}
container_running() { [[ "$(container_state)" == running ]]; }
container_run_id() {
    docker inspect -f '{{index .Config.Labels "av-emotion.run-id"}}' "$CONTAINER" 2>/dev/null | tr -d '[:space:]' || true
}

# Whether s3://BUCKET/runs/RUN_ID/checkpoints/last.pt exists. Only a 404 is "no": when S3
# cannot be asked, the answer is yes, since --resume fails with a clear line and never overwrites.
checkpoint_in_s3() {  # RUN_ID
    local err try
    for try in 1 2 3; do
        if err="$(aws s3api head-object --region "$AVE_REGION" --bucket "$AVE_BUCKET" \
            --key "runs/$1/checkpoints/last.pt" 2>&1 >/dev/null)"; then
            return 0
        fi
        [[ "$err" != *"(404)"* && "$err" != *"Not Found"* ]] || return 1
        sleep "$try"
    done
    say "cannot ask S3 for run $1's checkpoint ($err): resuming with --resume"
    return 0
}

# One of run, resume, watch's finish and watchdog at a time. `exec 9>` keeps the lock until the
# process ends. Waits are bounded: a stuck holder gives an error, not a hang.
take_lock() {  # [-n]: give up at once if held
    install -d -m 0700 "$STATE_DIR"
    exec 9>"$STATE_DIR/.lock"
    if [[ "${1:-}" == -n ]]; then
        flock -n 9
    else
        flock -w 300 9 || die "another bootstrap.sh has held $STATE_DIR/.lock for 300s"
    fi
}

stop_instance() {
    say "stopping the instance: $1"
    sync
    shutdown -h now "av-emotion: $1" || true
}

# --- the container ------------------------------------------------------------------------------
ecr_pull() {  # IMAGE; logs in with the instance role, pulls, logs out (no token left on disk)
    local image="$1" registry="${AVE_REPO_URL%%/*}"
    say "logging in to $registry and pulling $image"
    aws ecr get-login-password --region "$AVE_REGION" \
        | docker login --username AWS --password-stdin "$registry" >/dev/null \
        || die "ECR login failed (instance role, region $AVE_REGION)"
    docker pull --quiet "$image" >/dev/null || { docker logout "$registry" >/dev/null 2>&1; die "docker pull $image failed"; }
    docker logout "$registry" >/dev/null 2>&1 || true
}

# The REPO@sha256:DIGEST of a pulled image: what a later pull of the same run asks for.
image_digest() {  # IMAGE
    local ref
    ref="$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$1" \
        | grep -m1 "^$AVE_REPO_URL@sha256:")" || die "no digest of $AVE_REPO_URL for $1 after its pull"
    echo "$ref"
}

start_container() {  # RUN_ID IMAGE EXTRA_ARGS...; the image is local. Fails if docker run does.
    local id="$1" image="$2" init=()
    shift 2
    # tini as PID 1 forwards SIGTERM even before the trainer installs its handler.
    if [[ -x /usr/libexec/docker/docker-init ]] || command -v docker-init >/dev/null 2>&1; then init=(--init); fi
    if [[ "$(container_state)" != none ]]; then docker rm -f "$CONTAINER" >/dev/null; fi
    say "starting $CONTAINER: train --data s3://$AVE_BUCKET/data/ --out s3://$AVE_BUCKET/runs/$id/ $*"
    if ! docker run --detach --name "$CONTAINER" "${init[@]}" \
        --label "av-emotion.run-id=$id" \
        --stop-timeout "$STOP_SECONDS" --shm-size 1g \
        --log-driver awslogs \
        --log-opt "awslogs-region=$AVE_REGION" \
        --log-opt "awslogs-group=$AVE_LOG_GROUP" \
        --log-opt "awslogs-stream=$id" \
        --env "AWS_REGION=$AVE_REGION" --env "AWS_DEFAULT_REGION=$AVE_REGION" --env "AVE_RUN_ID=$id" \
        --env AVE_WATCH_SPOT=1 \
        "$image" \
        train --data "s3://$AVE_BUCKET/data/" --out "s3://$AVE_BUCKET/runs/$id/" "$@" >/dev/null; then
        docker rm -f "$CONTAINER" >/dev/null 2>&1 || true  # a container left "created"
        return 1
    fi
    rm -f "$IDLE_SINCE"
    systemctl restart ave-watch.service
}

# The record moves to last-run with OUTCOME: the run is over and no boot resumes it.
end_record() {  # CODE OUTCOME
    { cat "$CURRENT"; printf 'EXIT_CODE=%q\nOUTCOME=%q\nFINISHED_AT=%q\n' "$1" "$2" "$(date -u +%FT%TZ)"; } >"$LAST"
    rm -f "$CURRENT"
}

# A `docker run` that failed: no record is left for the next boot to "resume".
start_failed() {  # RUN_ID
    end_record "" start-failed
    die "docker run failed for run $1; its record is in $LAST (OUTCOME=start-failed), none is left to resume"
}

# --- modes --------------------------------------------------------------------------------------
# A failed first boot would leave an instance up, and paid for, with nothing to stop it.
setup_failed() {  # EXIT trap of the first boot's setup
    local code="$1"
    ((code != 0)) || return 0
    echo "ave-bootstrap: ERROR: first-boot setup failed (exit $code)" >&2
    stop_instance "first-boot setup failed (exit $code)"
}

install_self() {  # the copy the units run: this script without the user data's lines above it
    local self="${BASH_SOURCE[0]}" tmp
    tmp="$(mktemp)"
    sed -n '/^#!\/usr\/bin\/env bash/,$p' "$self" >"$tmp"
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

mode_run() {
    need_root
    local image=""  # without --image: the repository's :latest, recorded by its digest
    if [[ "${1:-}" == --image ]]; then
        (($# >= 2)) || die "usage: bootstrap.sh run [--image REPO@sha256:DIGEST] RUN_ID [train args...]" 2
        image="$2"
        shift 2
    fi
    (($# >= 1)) || die "usage: bootstrap.sh run [--image REPO@sha256:DIGEST] RUN_ID [train args...]" 2
    local id="$1"
    shift
    [[ "$id" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] || die "RUN_ID must be letters, digits, . _ - (got '$id')" 2
    load_settings
    take_lock
    if container_running; then
        die "run $(container_run_id) is going; stop it first (bootstrap.sh stop)" 3
    fi
    if read_record && [[ "$RUN_ID" != "$id" ]]; then
        say "the interrupted run $RUN_ID is not resumed: run $id replaces it (its artifacts stay)"
    fi
    image="${image:-$AVE_REPO_URL:latest}"
    [[ "$image" == "$AVE_REPO_URL"[@:]* ]] || die "--image $image is not in the stack's repository $AVE_REPO_URL" 2
    rm -f "$STOP_REASON"
    ecr_pull "$image"
    # The record keeps the digest and the image's id, so a resume uses this very image.
    write_record "$id" "$(image_digest "$image")" "$(docker image inspect -f '{{.Id}}' "$image")" "$@"
    start_container "$id" "$image" "$@" || start_failed "$id"
    say "run $id started; logs: CloudWatch $AVE_LOG_GROUP/$id; artifacts: s3://$AVE_BUCKET/runs/$id/"
}

mode_resume() {
    need_root
    load_settings
    take_lock
    if ! read_record; then
        say "no run to resume"
        return 0
    fi
    if container_running; then
        say "run $RUN_ID is going"
        systemctl start ave-watch.service
        return 0
    fi
    if past_max_hours "$(date +%s)"; then
        say "run $RUN_ID has passed AVE_MAX_RUN_HOURS=$AVE_MAX_RUN_HOURS since it started: not resumed"
        end_record "" stopped-max-runtime
        return 0
    fi
    local image="${RUN_IMAGE_ID:-$RUN_IMAGE}" args=() arg
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        image="$RUN_IMAGE"
        # A record from before RUN_IMAGE_ID holds an image id, not a digest: :latest is all
        # there is to pull for it.
        [[ "$image" == *@sha256:* ]] || image="$AVE_REPO_URL:latest"
        ecr_pull "$image"
    fi
    # --resume only with a checkpoint: the trainer refuses --resume without one, and refuses to
    # start over on top of one.
    for arg in "${RUN_ARGS[@]}"; do [[ "$arg" == --resume ]] || args+=("$arg"); done
    if checkpoint_in_s3 "$RUN_ID"; then
        args+=(--resume)
    else
        say "run $RUN_ID has no checkpoint in S3 yet: it starts again from the beginning"
    fi
    rm -f "$STOP_REASON"
    say "resuming run $RUN_ID from s3://$AVE_BUCKET/runs/$RUN_ID/"
    start_container "$RUN_ID" "$image" "${args[@]}" || start_failed "$RUN_ID"
}

mode_stop() {
    need_root
    load_settings
    if ! container_running; then
        say "no run container is running"
        return 0
    fi
    local id
    id="$(container_run_id)"
    echo replace >"$STOP_REASON"
    say "stopping run $id (SIGTERM, up to ${STOP_SECONDS}s for its checkpoint)"
    docker stop --time "$STOP_SECONDS" "$CONTAINER" >/dev/null
    # Wait (bounded) for the watcher to finish the run, so that a `run` right after finds no record.
    local waited=0
    while read_record && [[ "$RUN_ID" == "$id" ]] && ((waited < 60)); do
        sleep 1
        waited=$((waited + 1))
    done
    if read_record && [[ "$RUN_ID" == "$id" ]]; then  # no watcher (it was not running): finish here
        finish_run "$id" "$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")"
    fi
    say "run $id stopped (exit $(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER"))"
}

# What happens when the run with RUN_ID exited with CODE: see the header.
finish_run() {  # RUN_ID CODE
    local id="$1" code="$2" reason="" outcome
    take_lock
    if ! read_record || [[ "$RUN_ID" != "$id" ]]; then
        say "run $id exited ($code) but is no longer the current run; nothing to do"
        return 0
    fi
    [[ ! -f "$STOP_REASON" ]] || reason="$(cat "$STOP_REASON")"
    rm -f "$STOP_REASON"
    case "$reason:$code" in
        replace:*) outcome=stopped-by-operator ;;
        max-runtime:*) outcome=stopped-max-runtime ;;
        # A spot notice, whatever the exit: 137 when the checkpoint took longer than the grace
        # period. The run was not at fault; the next boot resumes it (from its checkpoint, or
        # from the start when it had none yet).
        interrupted:*) outcome=interrupted ;;
        *:143) outcome=interrupted ;;
        *:0) outcome="done" ;;
        *) outcome=failed ;;
    esac
    say "run $id exited with $code: $outcome"
    if [[ "$outcome" == interrupted ]]; then
        say "the record stays; the next boot resumes run $id"
    else
        end_record "$code" "$outcome"
    fi
    if [[ "$outcome" == stopped-by-operator ]]; then
        say "the instance stays up for the next run"
    elif [[ "$outcome" == interrupted ]]; then
        # No stop from here: a persistent spot request restarts only an instance that EC2 itself
        # stopped (one stopped from inside stays stopped), and the idle watchdog stops any other.
        say "the instance is left to EC2's interruption (or the idle watchdog)"
    else
        stop_instance "run $id $outcome"
    fi
}

mode_watch() {
    need_root
    load_settings
    local id code
    id="$(container_run_id)"
    if [[ -z "$id" ]]; then
        say "no run container to watch"
        return 0
    fi
    say "watching run $id"
    code="$(docker wait "$CONTAINER")" || true
    # Not a number: the engine went away (a restart); systemd restarts the watcher.
    [[ "$code" =~ ^[0-9]+$ ]] || die "docker wait $CONTAINER failed"
    finish_run "$id" "$code"
}

# IMDSv2: a spot interruption notice, if one was given.
spot_notice() {
    local token
    token="$(curl -sf -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
        http://169.254.169.254/latest/api/token)" || return 1
    curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" \
        http://169.254.169.254/latest/meta-data/spot/instance-action >/dev/null
}

mode_watchdog() {
    need_root
    load_settings
    take_lock -n || return 0   # a run is being started or finished
    local now
    now="$(date +%s)"
    install -d -m 0755 "$RUN_DIR"
    if container_running; then
        rm -f "$IDLE_SINCE"
        if spot_notice; then
            echo interrupted >"$STOP_REASON"
            say "spot interruption notice: stopping run $(container_run_id) for a checkpoint"
            docker stop --time 100 "$CONTAINER" >/dev/null
            return 0
        fi
        # Per run, not per container start: a resumed run keeps the clock of its first start.
        read_record || true
        if past_max_hours "$now"; then
            echo max-runtime >"$STOP_REASON"
            say "run $(container_run_id) passed AVE_MAX_RUN_HOURS=$AVE_MAX_RUN_HOURS: stopping it"
            docker stop --time "$STOP_SECONDS" "$CONTAINER" >/dev/null
        fi
        return 0
    fi
    ((AVE_IDLE_MINUTES > 0)) || return 0
    [[ -s "$IDLE_SINCE" ]] || echo "$now" >"$IDLE_SINCE"
    if ((now - $(cat "$IDLE_SINCE") >= AVE_IDLE_MINUTES * 60)); then
        stop_instance "no run for $AVE_IDLE_MINUTES minutes"
    fi
}

mode_status() {
    local name
    for name in "$CURRENT" "$LAST"; do
        echo "== $name"
        cat "$name" 2>/dev/null || echo "(none)"
    done
    echo "== container $CONTAINER: $(container_state)"
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
    -h | --help | help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown mode '$1' (setup, update, run, stop, status, resume, watch, watchdog)" 2 ;;
esac
