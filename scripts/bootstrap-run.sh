#!/usr/bin/env bash
# A training run's life on the instance: its record, its container, and the modes run, resume,
# stop, watch, watchdog and status that scripts/bootstrap.sh dispatches (its header says what
# each does, and its exit codes).
#
# Functions only; not run by itself. In a checkout, bootstrap.sh sources it. Everywhere else the
# two travel as one text, this file first: the user data (infra/compute.py), the copy deploy sends
# before each run (trainer/ops/cloud.py), and /usr/local/sbin/ave-bootstrap, whose shebang is the
# one above. The paths, settings and helpers it uses (say, die, stop_instance) are bootstrap.sh's.

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
