#!/usr/bin/env bash
# The one command for a CUDA GPU (an H100 or H200): builds rnnfast and checks and times its GPU kernels in
# stages, most important first, each under its own time limit (600 s in all), each appending its
# results to --out as it goes, so a stage cut short loses nothing earlier. Stages, files: docs/gpu_check.md.
#
#   bash benchmarks/gpu_check.sh [--out DIR]             every stage (default DIR: benchmarks/results/gpu-check-COMMIT)
#   bash benchmarks/gpu_check.sh --stage N [--limit S]   stage N alone (S: its time limit instead of the usual)
#   bash benchmarks/gpu_check.sh --dry-run               no GPU needed: each stage's entry point imports and
#                                                        parses its arguments; prints the limits and the total
#   --commit SHA   the commit under test, for a tree without .git (where git answers, its commit is recorded)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

# Stages: entry point benchmarks.gpu.NAME and time limit in seconds. First guesses, to be set from the
# stage records of the first GPU run. The last stage also gets the time the others leave unused; the
# summary at the end has SUMMARY_LIMIT.
NAMES=(env smoke sanitize timings pytests)
LIMITS=(120 150 120 150 50)
SUMMARY_LIMIT=10
TOTAL=600

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

out="" stage="" limit="" dry=0 commit_arg=""
while (($#)); do
  case "$1" in
    --out) out=${2-}; shift 2 || shift ;;
    --out=*) out=${1#*=}; shift ;;
    --stage) stage=${2-}; shift 2 || shift ;;
    --stage=*) stage=${1#*=}; shift ;;
    --limit) limit=${2-}; shift 2 || shift ;;
    --limit=*) limit=${1#*=}; shift ;;
    --commit) commit_arg=${2-}; shift 2 || shift ;;
    --commit=*) commit_arg=${1#*=}; shift ;;
    --dry-run) dry=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -n $stage && ! $stage =~ ^[0-9]+$ || -n $stage && $stage -ge ${#NAMES[@]} ]]; then
  echo "gpu_check.sh: --stage: expected 0 to $((${#NAMES[@]} - 1)), got '$stage'" >&2; exit 2
fi
if [[ -n $limit && ( -z $stage || ! $limit =~ ^[0-9]+$ || $limit -lt 30 ) ]]; then
  echo "gpu_check.sh: --limit: expected seconds (at least 30) for the stage --stage names, got '$limit'" >&2; exit 2
fi
if [[ -n $commit_arg && ! $commit_arg =~ ^[0-9a-fA-F]{7,40}$ ]]; then
  echo "gpu_check.sh: --commit: expected a hex commit id of 7 to 40 digits, got '$commit_arg'" >&2; exit 2
fi

# The commit: git's where this tree is a checkout of its own, else --commit, else unknown.
commit=unknown source=none
top=$(git -C "$ROOT" rev-parse --show-toplevel 2>/dev/null) || top=""
if [[ -n $top && $(cd "$top" && pwd) == "$ROOT" ]] && sha=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null); then
  commit=$sha source=git
  if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit+="-dirty"
  fi
  if [[ -n $commit_arg && $sha != "$commit_arg"* ]]; then
    echo "gpu_check.sh: --commit $commit_arg is not this checkout's HEAD $sha; recording git's" >&2
  fi
elif [[ -n $commit_arg ]]; then
  commit=$commit_arg source=argument
fi
out=${out:-benchmarks/results/gpu-check-${commit:0:12}}

PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
run_id=$(date -u +%Y%m%dT%H%M%SZ)
common=(--out "$out" --run "$run_id" --commit "$commit" --commit-source "$source")
if [[ -n $stage ]]; then selected=("$stage"); else selected=("${!NAMES[@]}"); fi

if ((dry)); then
  status=0 sum=0
  for i in "${selected[@]}"; do
    lim=${limit:-${LIMITS[i]}}
    sum=$((sum + lim))
    note=""
    ((i == ${#NAMES[@]} - 1 && ${#selected[@]} > 1)) && note=" (and what the earlier stages leave)"
    echo "stage $i ${NAMES[i]}: limit $lim s$note"
    "$PYTHON" -m "benchmarks.gpu.${NAMES[i]}" "${common[@]}" --budget-s "$lim" --dry-run || {
      echo "stage $i ${NAMES[i]}: its entry point failed" >&2
      status=1
    }
  done
  echo "summary: limit $SUMMARY_LIMIT s"
  echo "total $((sum + SUMMARY_LIMIT)) s"
  if ((${#selected[@]} == ${#NAMES[@]} && sum + SUMMARY_LIMIT > TOTAL)); then
    echo "gpu_check.sh: the limits add up to more than $TOTAL s" >&2
    status=1
  fi
  exit "$status"
fi

if ! command -v nvidia-smi >/dev/null && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check.sh: no CUDA GPU here (no nvidia-smi, torch.cuda.is_available() is False); --dry-run runs anywhere" >&2
  exit 2
fi
if command -v nvidia-smi >/dev/null; then
  IFS=, read -r gpu driver < <(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
  gpu=${gpu-} driver=${driver-}
  export RNNFAST_GPU_CHECK_GPU="${gpu#"${gpu%%[![:space:]]*}"}"
  export RNNFAST_GPU_CHECK_DRIVER="${driver//[[:space:]]/}"
fi
mkdir -p "$out" || exit 2

# stage_record NUMBER STATUS LIMIT RC SECONDS TIMED_OUT: one line of run.jsonl
stage_record() {
  printf '{"run":"%s","stage":"%s","stage_number":%d,"kind":"stage","status":"%s","limit_s":%d,"rc":%d,"seconds":%d,"timed_out":%s,"commit":"%s","commit_source":"%s","time":"%s"}\n' \
    "$run_id" "${NAMES[$1]}" "$1" "$2" "$3" "$4" "$5" "$6" "$commit" "$source" "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" \
    >>"$out/run.jsonl"
}

run_stage() {
  local i=$1 lim=$2 name=${NAMES[$1]} sig=TERM start rc seconds timed_out=false
  [[ $name == pytests ]] && sig=INT # pytest ends its session cleanly on SIGINT and still writes the junit XML
  if ((lim < 30)); then
    echo "=== stage $i $name: skipped, $lim s left"
    stage_record "$i" cut "$lim" 124 0 true
    return 1
  fi
  start=$(date +%s)
  echo "=== stage $i $name: limit $lim s"
  local cmd=("$PYTHON" -m "benchmarks.gpu.$name" "${common[@]}" --budget-s "$((lim - 10))" --deadline "$((start + lim - 10))")
  echo "+ ${cmd[*]}"
  timeout -s "$sig" -k 5 "$((lim - 5))" "${cmd[@]}" </dev/null
  rc=$?
  seconds=$(($(date +%s) - start))
  ((rc == 124 || rc == 137)) && timed_out=true
  stage_record "$i" "$( ((rc == 0)) && echo ok || echo error)" "$lim" "$rc" "$seconds" "$timed_out"
  echo "=== stage $i $name: exit code $rc after $seconds s$([[ $timed_out == true ]] && echo ' (time limit)')"
  return $((rc != 0))
}

main() {
  local t0 status=0 lim i
  t0=$(date +%s)
  echo "gpu_check: commit $commit ($source), run $run_id, results in $out"
  for i in "${selected[@]}"; do
    lim=${limit:-${LIMITS[i]}}
    if ((i == ${#NAMES[@]} - 1 && ${#selected[@]} > 1)); then
      lim=$((TOTAL - SUMMARY_LIMIT - ($(date +%s) - t0)))
    fi
    run_stage "$i" "$lim" || status=1
  done
  timeout -k 2 "$SUMMARY_LIMIT" "$PYTHON" -m benchmarks.gpu.summary --out "$out" --run "$run_id" || status=1
  echo "gpu_check: done in $(($(date +%s) - t0)) s, exit code $status; results in $out"
  return "$status"
}

main 2>&1 | tee -a "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
