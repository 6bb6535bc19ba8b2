<?php

declare(strict_types=1);

// Bench echo worker on the pure-PHP package (php-client/), loaded with a minimal PSR-4
// autoloader so the bench needs no `composer install`.

if (extension_loaded('pier')) {
    fwrite(STDERR, "pier-bench: worker-php.php must run without the pier extension (it would shadow the package)\n");
    exit(2);
}
$src = dirname(__DIR__, 2) . '/php-client/src/';
spl_autoload_register(static function (string $class) use ($src): void {
    if (str_starts_with($class, 'Pier\\')) {
        $file = $src . str_replace('\\', '/', substr($class, 5)) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});
require __DIR__ . '/serve.php';
pier_bench_serve(pier_bench_block_us($argv));
