#!/bin/bash
# Redis µs per steady-state save (BENCHMARKS.md): one session + its index,
# created by a save with version 0, then N saves with the right version,
# `now` advancing STEP ms per save. Usage: PORT=6399 save_cost.sh LIB TAG N STEP IDLE user|anon
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
lib=$1 tag=$2 n=$3 step=$4 idle=$5 mode=$6
python3 "$(dirname "$0")/save_cost_stream.py" $lib $tag $n $step $idle $mode 0 $n > $tmp/stream.resp
# the create (version 0) goes first, outside the measurement
head -c $(python3 "$(dirname "$0")/save_cost_stream.py" $lib $tag $n $step $idle $mode 0 0 | wc -c) $tmp/stream.resp > $tmp/create.resp
tail -c +$(( $(wc -c < $tmp/create.resp) + 1 )) $tmp/stream.resp > $tmp/steady.resp
redis-cli -p ${PORT:-6379} --pipe < $tmp/create.resp > /dev/null
redis-cli -p ${PORT:-6379} CONFIG RESETSTAT > /dev/null
redis-cli -p ${PORT:-6379} --pipe < $tmp/steady.resp | grep errors
redis-cli -p ${PORT:-6379} INFO commandstats | grep -E 'fcall|hmget|zscore|zrangebyscore|hset|pexpireat|zadd|zrem|persist|exists|zrange|zcount' | sed 's/,rejected.*//' | tr -d '\r' | awk -v lib=$lib -v n=$n '{split($0,a,/[:=,]/); printf "%s %-22s calls/save=%.3f usec_per_call=%s\n", lib, a[1], a[3]/n, a[7]}'
echo "$lib final v: $(redis-cli -p ${PORT:-6379} HGET "p{$tag}:s:x" v)"
