#!/bin/sh
# Build the hiredis ceiling (benches/redis_ceiling.c) into benches/.build/.
# Needs gcc and hiredis (Debian: apt-get install libhiredis-dev).
set -eu
cd "$(dirname "$0")"
mkdir -p .build
gcc -O2 -Wall -Wextra -o .build/redis_ceiling_c redis_ceiling.c -lhiredis
echo "built $(pwd)/.build/redis_ceiling_c"
