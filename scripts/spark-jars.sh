#!/usr/bin/env bash
# Fetches the jars Spark needs for s3a:// (hadoop-aws + the AWS SDK v2 bundle, pinned in
# scripts/spark-jars/pom.xml) from Maven Central into .cache/spark-jars/ (git-ignored).
# The Spark session adds that folder's jars (dw_assets/ingest/spark.py). A no-op, offline, once the
# folder holds the jars of the current pom (a stamp keyed on the pom's hash).
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."

pom=scripts/spark-jars/pom.xml
out=${DW_SPARK_JARS_DIR:-.cache/spark-jars}
repo=${DW_SPARK_JARS_M2:-.cache/m2}
stamp="$out/.complete-$(cat "$pom" "$self" | sha1sum | cut -c1-12)"  # the pom and this script
[ -f "$stamp" ] && exit 0

# hadoop-aws must be built for the Hadoop inside the pinned pyspark (a mismatch fails at run time).
pinned=$(sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' "$pom")
for api in .venv/lib/python*/site-packages/pyspark/jars/hadoop-client-api-*.jar; do
  [ -f "$api" ] || continue
  bundled=$(basename "$api" .jar); bundled=${bundled#hadoop-client-api-}
  if [ "$bundled" != "$pinned" ]; then
    echo "[spark-jars] pyspark bundles Hadoop $bundled but $pom pins hadoop.version $pinned:" \
         "set hadoop.version to $bundled and awssdk.version to the aws-java-sdk-v2.version of" \
         "https://repo1.maven.org/maven2/org/apache/hadoop/hadoop-project/$bundled/hadoop-project-$bundled.pom" >&2
    exit 1
  fi
done

if ! command -v mvn >/dev/null 2>&1; then
  echo "[spark-jars] mvn not found: installing maven" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq maven >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq maven >/dev/null; }
fi

echo "[spark-jars] resolving hadoop-aws $pinned and the AWS SDK bundle into $out (~690 MB, once)" >&2
start=$(date +%s)
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$(dirname "$out")/.spark-jars.tmp-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Maven's log is shown only when it fails.
mvn -B -f "$pom" -Dmaven.repo.local="$PWD/$repo" dependency:build-classpath -Dmdep.includeScope=runtime \
    -Dmdep.outputFile="$PWD/$tmp/classpath.txt" > "$tmp/mvn.log" 2>&1 || { cat "$tmp/mvn.log" >&2; exit 1; }
# Maven writes the classpath without a final newline.
tr ':' '\n' < "$tmp/classpath.txt" | while read -r jar || [ -n "$jar" ]; do
  [ -n "$jar" ] || continue
  # A hard link, not a copy: the bundle alone is ~690 MB and Maven's repository keeps it too.
  ln -f "$jar" "$tmp/" 2>/dev/null || cp "$jar" "$tmp/"
done
rm "$tmp/classpath.txt" "$tmp/mvn.log"
for want in "hadoop-aws-$pinned.jar" "bundle-$(sed -n 's:.*<awssdk.version>\(.*\)</awssdk.version>.*:\1:p' "$pom").jar"; do
  [ -f "$tmp/$want" ] || { echo "[spark-jars] Maven did not resolve $want" >&2; exit 1; }
done
touch "$tmp/$(basename "$stamp")"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "[spark-jars] $(ls "$out" | wc -l) jars in $out in $(( $(date +%s) - start ))s" >&2
