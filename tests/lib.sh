# Shared helpers of the shell tests (sourced after `cd` to the repository root):
#   ok / bad MESSAGE       count a passed / failed check (bad prints MESSAGE to stderr)
#   check EXPR MESSAGE     evaluates the shell expression EXPR: ok if it succeeds, else bad
#   summary                prints the "N passed, N failed" line and returns non-zero on failures
PASS=0; FAIL=0
ok()  { PASS=$((PASS + 1)); }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*" >&2; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }
summary() { echo "$PASS passed, $FAIL failed"; [ "$FAIL" -eq 0 ]; }
