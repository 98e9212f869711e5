#!/usr/bin/env bash
# Runs a command (CI: the test command) and fails if it used a Debian package that scripts/packages does not install.
#
#   scripts/deps-check.sh [--packages FILE] [--] CMD [ARG...]
#   scripts/deps-check.sh --self-test
#
# A green run on a machine that happens to have a package (protobuf's .proto files, say) hides a missing install
# step. So every file the command and its children execute or open under the system directories is traced
# (strace -f, only execve/open*, successful calls), mapped to the package that owns it (dpkg's file lists), and each
# such package must be one of:
#   - named in the package list (scripts/packages by default),
#   - pulled in by those through Depends/Pre-Depends (what `apt-get install --no-install-recommends` installs too),
#   - part of every Debian system (Essential: yes, or Priority: required).
# Exit status: the command's own when it passed the check; 1 when a package is missing from the list (the command's
# failure, if any, is reported as well). Needs strace (in the list itself) and root for tracing the test suite.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
packages="$here/packages"
# --self-test: proves the check catches what it is for. etcd-client's build runs protoc on descriptor.proto; without
# libprotobuf-dev in the list (the hole this check was made for) it must fail and name the package, with it pass.
if [ "${1:-}" = --self-test ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  probe=(protoc -I/usr/include --descriptor_set_out=/dev/null /usr/include/google/protobuf/descriptor.proto)
  grep -v '^#' "$packages" | sed 's/\blibprotobuf-dev\b//' >"$tmp/without"
  if bash "$0" --packages "$tmp/without" -- "${probe[@]}" >/dev/null 2>"$tmp/err"; then
    echo "deps-check self-test FAILED: a list without libprotobuf-dev passed" >&2; exit 1
  fi
  grep -q 'libprotobuf-dev' "$tmp/err" || { echo "deps-check self-test FAILED: libprotobuf-dev not named:" >&2; cat "$tmp/err" >&2; exit 1; }
  bash "$0" --packages "$packages" -- "${probe[@]}" >/dev/null || { echo "deps-check self-test FAILED: the full list did not pass" >&2; exit 1; }
  echo "deps-check self-test: ok (a list without libprotobuf-dev is caught; the project's list passes)"
  exit 0
fi
while (($#)); do
  case $1 in
    --packages) packages=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if ((!$#)); then
  echo "usage: $0 [--packages FILE] [--] CMD [ARG...]" >&2
  exit 2
fi
command -v strace >/dev/null || { echo "deps-check: strace is not installed (scripts/deps.sh installs it)" >&2; exit 2; }
work=$(mktemp -d)
trap "${DEPS_CHECK_KEEP:+: }rm -rf \"$work\"" EXIT

# Only the first path argument of each call matters; keep the system ones, once each, as the trace streams by
# (a full test run makes millions of calls: the raw trace is never written out).
filter='
  match($0, /"[^"]*"/) {
    p = substr($0, RSTART + 1, RLENGTH - 2)
    if (p ~ /^\/(usr|etc|bin|sbin|lib|lib32|lib64|libx32|opt)\// && p !~ /^\/usr\/local\// && !(p in seen)) {
      seen[p] = 1; print p
    }
  }'
set +e
strace -f -qq --seccomp-bpf -z -s 4096 -e trace=execve,execveat,open,openat,openat2 -e signal=none \
  -o "|awk '$filter' > '$work/used'" -- "$@"
rc=$?
set -e
# strace's output pipe is closed when strace exits; give the filter a moment to flush.
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s "$work/used" ] && break; sleep 0.2; done

# Paths as the programs wrote them can hold ".." (ld opens /usr/bin/../lib/bfd-plugins/...): normalise them, without
# resolving symlinks yet.
while IFS= read -r p; do realpath -ms -- "$p"; done <"$work/used" | sort -u >"$work/norm"

# Files programs read when they are there and do without otherwise (glibc's locale aliases and archives, message
# catalogues, debug symbols a backtrace looks up, and the linker plugins binutils' ld and ar load from bfd-plugins,
# such as LLVMgold from an installed LLVM): using them proves no dependency. What such a file pulls in with it
# (LLVMgold loads libLLVM, libxml2, ...) is allowed too: the owners of the optional files join the closure below.
optional='^/etc/locale\.alias$|^/usr/lib/locale/|^/usr/share/locale/|^/usr/share/i18n/|^/usr/lib/debug/|^/usr/lib/bfd-plugins/'
# Merged /usr: dpkg lists /bin/x, /lib/x for files that live under /usr; compare in one form.
canon='function canon(p) { if (p ~ /^\/(bin|sbin|lib|lib32|lib64|libx32)\//) p = "/usr" p; return p }'
# Every used path, and what it resolves to (an alternatives symlink belongs to nobody; its target does).
# Directories are left out: many packages own /etc/ssl/certs or /usr/lib/gcc/<triplet>/12, and listing one proves
# nothing about what was read in it.
while IFS= read -r p; do
  [ -d "$p" ] && continue
  printf '%s\n' "$p"
  if r=$(realpath -e -- "$p" 2>/dev/null) && [ "$r" != "$p" ]; then printf '%s\n' "$r"; fi
done < <(grep -Ev "$optional" "$work/norm" || true) | awk "$canon"'{ print canon($0) }' | sort -u >"$work/paths"

# File → package, from dpkg's lists.
awk "$canon"'{ f = FILENAME; sub(/.*\//, "", f); sub(/\.list$/, "", f); sub(/:.*/, "", f); print canon($0) "\t" f }' \
  /var/lib/dpkg/info/*.list | sort -u >"$work/index"
awk -F'\t' 'NR == FNR { want[$0] = 1; next } ($1 in want) { print $2 "\t" $1 }' "$work/paths" "$work/index" |
  sort -u -k1,1 >"$work/usedpkgs"   # one example path per package

# Owners of the optional files that were used (resolved through their symlinks, as above).
while IFS= read -r p; do
  [ -d "$p" ] && continue
  printf '%s\n' "$p"
  if r=$(realpath -e -- "$p" 2>/dev/null) && [ "$r" != "$p" ]; then printf '%s\n' "$r"; fi
done < <(grep -E "$optional" "$work/norm" || true) | awk "$canon"'{ print canon($0) }' | sort -u >"$work/optpaths"
awk -F'\t' 'NR == FNR { want[$0] = 1; next } ($1 in want) { print $2 }' "$work/optpaths" "$work/index" |
  sort -u >"$work/optpkgs"

# Allowed packages: the list, its dependency closure among installed packages, and the base system (and what the
# optional files came with).
sed -e 's/#.*//' "$packages" | tr -s ' \t' '\n' | sed '/^$/d' | sort -u >"$work/list"
dpkg-query -W -f='${db:Status-Abbrev}\t${Package}\t${Essential}\t${Priority}\t${Provides}\t${Pre-Depends}, ${Depends}\n' \
  >"$work/status"
awk -F'\t' '
  function bare(s) { gsub(/\([^)]*\)/, "", s); gsub(/:[a-z0-9]+/, "", s); gsub(/[ \t]/, "", s); return s }
  FILENAME == optfile { opt[$0] = 1; next }
  FILENAME == listfile { list[$0] = 1; next }
  $1 ~ /^ii/ {
    pkg = $2; installed[pkg] = 1
    if ($3 == "yes" || $4 == "required") base[pkg] = 1
    n = split($5, pv, ","); for (i = 1; i <= n; i++) { v = bare(pv[i]); if (v != "") provider[v] = provider[v] " " pkg }
    deps[pkg] = $6
  }
  END {
    for (p in list) if (!(p in installed)) { print "deps-check: " p " (in the package list) is not installed: run scripts/deps.sh" > "/dev/stderr"; bad = 1 }
    for (p in list) if (p in installed) { queue[++qn] = p; allowed[p] = 1 }
    for (p in base) if (!(p in allowed)) { queue[++qn] = p; allowed[p] = 1 }
    for (p in opt) if ((p in installed) && !(p in allowed)) { queue[++qn] = p; allowed[p] = 1 }
    for (qi = 1; qi <= qn; qi++) {
      n = split(deps[queue[qi]], groups, ",")
      for (g = 1; g <= n; g++) {
        m = split(groups[g], alts, "|")
        for (a = 1; a <= m; a++) {
          d = bare(alts[a]); if (d == "") continue
          cands = (d in installed ? d : "") provider[d]
          k = split(cands, cs, " ")
          for (c = 1; c <= k; c++) if (cs[c] != "" && !(cs[c] in allowed)) { allowed[cs[c]] = 1; queue[++qn] = cs[c] }
        }
      }
    }
    for (p in allowed) print p
    exit bad
  }' optfile="$work/optpkgs" listfile="$work/list" "$work/optpkgs" "$work/list" "$work/status" |
  sort -u >"$work/allowed" || exit 1

missing=$(awk -F'\t' 'NR == FNR { ok[$0] = 1; next } !($1 in ok) { print }' "$work/allowed" "$work/usedpkgs")
used=$(wc -l <"$work/usedpkgs")
if [ -n "$missing" ]; then
  echo >&2
  echo "deps-check: FAILED: the command used packages that $(basename "$packages") does not install:" >&2
  printf '%s\n' "$missing" | awk -F'\t' '{ printf "  %-32s e.g. %s\n", $1, $2 }' >&2
  echo "add them to scripts/packages (or the package that depends on them)" >&2
  [ "$rc" -ne 0 ] && echo "deps-check: the command itself also failed (exit $rc)" >&2
  exit 1
fi
echo "deps-check: ok: the command used files of $used Debian packages, each installed by scripts/packages or part of the base system"
exit "$rc"
