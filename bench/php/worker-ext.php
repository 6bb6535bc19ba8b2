<?php

declare(strict_types=1);

// Bench echo worker on the Pier extension (run with `php -d extension=/abs/path/libpier.so`).

if (!extension_loaded('pier')) {
    fwrite(STDERR, "pier-bench: worker-ext.php needs the pier extension (php -d extension=.../libpier.so)\n");
    exit(2);
}
require __DIR__ . '/serve.php';
pier_bench_serve(pier_bench_block_us($argv));
