#!/bin/sh
# One shard of the "report" pipeline: does its slice and writes a JSON result.
echo "shard $RUNYARD_SHARD_INDEX of $RUNYARD_SHARD_COUNT checking"
echo "::progress 50 halfway"
passed=$((RUNYARD_SHARD_INDEX + 3))
printf '{"shard": %s, "passed": %s}\n' "$RUNYARD_SHARD_INDEX" "$passed" > "$RUNYARD_RESULT_FILE"
echo "::progress 100 done"
