#!/bin/sh
# A tiny job: greets, reports progress, and shows the environment runyard gives it.
echo "hello, $1 (shard $RUNYARD_SHARD_INDEX of $RUNYARD_SHARD_COUNT, attempt $RUNYARD_ATTEMPT)"
for i in 1 2 3 4; do
  echo "::progress $((i * 25)) step $i of 4"
  sleep 0.5
done
echo "done" >&2
