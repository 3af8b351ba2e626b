#!/usr/bin/env bash
# A shared MLflow tracking server for a team: runs, metrics and artifacts all go through it.
#
#   bash scripts/tracking_server.sh [--backend URI] [--artifacts DIR|URI] [--host HOST]
#                                   [--port PORT] [--workers N] [-- MORE_MLFLOW_SERVER_ARGS]
#
#   --backend    where runs, params and metrics live (mlflow server --backend-store-uri):
#                sqlite:///ABS/PATH/mlflow.db (one machine) or, for a team,
#                postgresql://USER:PASSWORD@DBHOST:5432/mlflow (run with psycopg2 when psycopg 3
#                is not installed: postgresql+psycopg2://...).
#                Default: sqlite:///$PWD/mlflow-server/mlflow.db
#   --artifacts  where the server keeps artifacts (--artifacts-destination): a directory or an
#                object store URI (s3://bucket/path, gs://...). Clients upload and download
#                through the server (--serve-artifacts): they need no access to it themselves.
#                Default: $PWD/mlflow-server/artifacts
#   --host       interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every
#                interface, then also pass -- --allowed-hosts SERVER_NAME:PORT)
#   --port       default 5000
#   --workers    server worker processes (default 4)
#
# Jobs then log to it with `tracking.uri=http://HOST:PORT` (or MLFLOW_TRACKING_URI=...), from
# any machine that reaches it, e.g. a sweep of parallel workers or SLURM array tasks:
#   python -m layer_sensitivity -m hydra/launcher=local_parallel quant_pair=fp8,int8 \
#       tracking.uri=http://127.0.0.1:5000
# The script execs `mlflow server` (SIGINT or SIGTERM to its process group stops it). MLflow's
# server-side job runner (GenAI scorers; 7 extra processes) is off unless
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true is set: this project does not use it.
# Exit status 2: bad arguments.
set -euo pipefail

usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
backend="sqlite:///$PWD/mlflow-server/mlflow.db"
artifacts="$PWD/mlflow-server/artifacts"
host="127.0.0.1"
port=5000
workers=4
extra=()

need_value() {
    [[ $2 -ge 2 && -n "$3" ]] || { echo "error: $1 needs a value (--help for usage)" >&2; exit 2; }
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --backend) need_value "$1" $# "${2-}"; backend="$2"; shift 2 ;;
        --artifacts) need_value "$1" $# "${2-}"; artifacts="$2"; shift 2 ;;
        --host) need_value "$1" $# "${2-}"; host="$2"; shift 2 ;;
        --port) need_value "$1" $# "${2-}"; port="$2"; shift 2 ;;
        --workers) need_value "$1" $# "${2-}"; workers="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "error: unknown option '$1' (--help for usage)" >&2; exit 2 ;;
    esac
done

[[ "$port" =~ ^[0-9]+$ ]] || { echo "error: --port must be a number, not '$port'" >&2; exit 2; }
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || { echo "error: --workers must be a positive number, not '$workers'" >&2; exit 2; }
case "$backend" in
    sqlite:///*)
        # SQLite: one machine, a local disk (its locking fails on NFS and other network file systems).
        mkdir -p "$(dirname "${backend#sqlite:///}")" ;;
    postgresql://*|postgresql+*://*|mysql://*|mysql+*://*|mssql+*://*) ;;
    *) echo "error: --backend '$backend' is not a database URI; use sqlite:///ABS/PATH/mlflow.db or postgresql://USER:PASSWORD@HOST:5432/DB" >&2
       exit 2 ;;
esac
case "$artifacts" in
    *://*) ;;
    *) mkdir -p "$artifacts"; artifacts="$(cd "$artifacts" && pwd)" ;;
esac

# The mlflow of this project's environment when there is one, else the one on PATH.
mlflow_bin="$root/.venv/bin/mlflow"
[[ -x "$mlflow_bin" ]] || mlflow_bin="$(command -v mlflow)" || {
    echo "error: mlflow is not installed (pip install -e . in this repository)" >&2; exit 2; }

# SQLAlchemy 2.1 reads postgresql:// as the psycopg (3) driver; with only psycopg2 installed
# (psycopg2-binary, this project's test extra) name that driver instead.
python_bin="$(dirname "$mlflow_bin")/python"
if [[ "$backend" == postgresql://* ]] && [[ -x "$python_bin" ]] \
        && ! "$python_bin" -c "import psycopg" 2>/dev/null \
        && "$python_bin" -c "import psycopg2" 2>/dev/null; then
    backend="postgresql+psycopg2://${backend#postgresql://}"
fi
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
shown_backend="$(printf '%s' "$backend" | sed -E 's#://([^:/@]+):[^@]*@#://\1:***@#')"
echo "mlflow server: backend $shown_backend, artifacts $artifacts, http://$host:$port" >&2
echo "clients: tracking.uri=http://$host:$port  (or export MLFLOW_TRACKING_URI=http://$host:$port)" >&2
exec "$mlflow_bin" server \
    --backend-store-uri "$backend" \
    --serve-artifacts --artifacts-destination "$artifacts" \
    --host "$host" --port "$port" --workers "$workers" \
    ${extra[@]+"${extra[@]}"}
