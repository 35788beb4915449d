#!/usr/bin/env bash
# Offline check of the Bazel BUILD files with Debian's bazel-bootstrap 4.2.3 (WORKSPACE mode;
# nothing here reads MODULE.bazel). A temporary workspace links the repository's root BUILD.bazel,
# proto/ and client-cpp/ unchanged, and stands in for each Bazel Central Registry module with a
# local repository of the same name whose targets are the system packages (libzmq3-dev,
# cppzmq-dev, libprotobuf-dev + protoc, libgtest-dev). Then it builds //client-cpp:client and the
# example and runs the codec and matcher tests. client-cpp/README.md says what this proves.
#
# Usage: check.sh REPO_ROOT OUTPUT_ROOT
set -euo pipefail
root=$(cd "$1" && pwd)
out_root=$(mkdir -p "$2" && cd "$2" && pwd)
# A fixed path keeps the output base (keyed on it) reused between runs.
ws=/tmp/inferential-bazel-check-$(id -u)
rm -rf "$ws" && mkdir -p "$ws"
trap 'rm -rf "$ws"' EXIT

ln -s "$root/BUILD.bazel" "$ws/BUILD.bazel"
ln -s "$root/proto" "$ws/proto"
ln -s "$root/client-cpp" "$ws/client-cpp"
repos="$ws/repos"
mkdir -p "$repos"

repo() {  # repo NAME: an empty local repository
  mkdir -p "$repos/$1"
  echo "workspace(name = \"$1\")" >"$repos/$1/WORKSPACE"
}

# rules_cc: @rules_cc//cc:defs.bzl re-exports the rules built into Bazel 4.2.3.
repo rules_cc
mkdir -p "$repos/rules_cc/cc"
touch "$repos/rules_cc/BUILD" "$repos/rules_cc/cc/BUILD"
for rule in cc_library cc_binary cc_test cc_import cc_toolchain cc_toolchain_suite cc_proto_library \
  fdo_profile fdo_prefetch_hints objc_library objc_import; do
  printf 'def %s(**kwargs):\n    native.%s(**kwargs)\n\n' "$rule" "$rule"
done >"$repos/rules_cc/cc/defs.bzl"

# protobuf: the BCR module's load paths and targets, over the system protoc and libprotobuf.
repo protobuf
mkdir -p "$repos/protobuf/bazel" "$repos/protobuf/google/protobuf"
ln -s /usr/include/google/protobuf/descriptor.proto "$repos/protobuf/google/protobuf/descriptor.proto"
touch "$repos/protobuf/bazel/BUILD"
echo 'def proto_library(**kwargs):
    native.proto_library(**kwargs)' >"$repos/protobuf/bazel/proto_library.bzl"
echo 'def cc_proto_library(**kwargs):
    native.cc_proto_library(**kwargs)' >"$repos/protobuf/bazel/cc_proto_library.bzl"
printf '#!/bin/sh\nexec /usr/bin/protoc "$@"\n' >"$repos/protobuf/protoc.sh"
chmod +x "$repos/protobuf/protoc.sh"
cat >"$repos/protobuf/BUILD" <<'BZL'
package(default_visibility = ["//visibility:public"])

cc_library(name = "protobuf", linkopts = ["-lprotobuf", "-lpthread"])

sh_binary(name = "protoc", srcs = ["protoc.sh"])

proto_library(name = "descriptor_proto", srcs = ["google/protobuf/descriptor.proto"])

# descriptor.pb.* are part of libprotobuf: generate nothing for them.
proto_lang_toolchain(
    name = "cc_toolchain",
    blacklisted_protos = [":descriptor_proto"],
    command_line = "--cpp_out=$(OUT)",
    runtime = ":protobuf",
)
BZL

repo libzmq
echo 'cc_library(name = "libzmq", linkopts = ["-lzmq"], visibility = ["//visibility:public"])' >"$repos/libzmq/BUILD"
repo cppzmq
echo 'cc_library(name = "cppzmq", deps = ["@libzmq"], visibility = ["//visibility:public"])' >"$repos/cppzmq/BUILD"
repo googletest
cat >"$repos/googletest/BUILD" <<'BZL'
cc_library(
    name = "gtest_main",
    linkopts = ["-lgtest_main", "-lgtest", "-lpthread"],
    visibility = ["//visibility:public"],
)
BZL

# Bazel 4.2.3 wants a coverage tools repository even when no coverage runs.
repo remote_coverage_tools
printf '#!/bin/sh\nexit 0\n' >"$repos/remote_coverage_tools/stub.sh"
chmod +x "$repos/remote_coverage_tools/stub.sh"
cat >"$repos/remote_coverage_tools/BUILD" <<'BZL'
package(default_visibility = ["//visibility:public"])
sh_binary(name = "coverage_report_generator", srcs = ["stub.sh"])
sh_binary(name = "lcov_merger", srcs = ["stub.sh"])
BZL

{
  echo 'workspace(name = "inferential")'
  for name in rules_cc protobuf libzmq cppzmq googletest remote_coverage_tools; do
    echo "local_repository(name = \"$name\", path = \"repos/$name\")"
  done
  echo 'local_repository(name = "rules_java", path = "/usr/share/bazel/rules/java")'
} >"$ws/WORKSPACE"

cat >"$ws/.bazelrc" <<'RC'
build --proto_compiler=@protobuf//:protoc
build --proto_toolchain_for_cc=@protobuf//:cc_toolchain
build --cxxopt=-std=c++17
build --jobs=2
build --color=no --curses=no
RC

cd "$ws"
bazel --output_user_root="$out_root" --batch build //client-cpp:client //client-cpp:control_loop //client-cpp:chunked_loop //client-cpp:test_integration
bazel --output_user_root="$out_root" --batch test --test_output=errors //client-cpp:test_codec //client-cpp:test_matching //client-cpp:test_chunks
