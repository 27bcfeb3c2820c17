"""Student training in one run on the same machine: (a) CE only, (b) distillation from the cache,
(c) online distillation with the two teachers in memory — tokens/s and peak RSS of each.

    python benchmarks/bench_student.py [--student llama-student-small] [--temperature 2.0]

The student arms of bench_train.py (each arm its own process, interleaved, medians); prints a
table, then one JSON line with kd_cache_vs_ce, peak_rss_mb_kd_cache_vs_ce and kd_cache_vs_online.
"""
import sys

import bench_train

if __name__ == "__main__":
    sys.argv.insert(1, "--presets=")  # no teacher-loop arms: only bare/CE/cache/online for the student
    bench_train.main()
