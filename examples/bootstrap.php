<?php

declare(strict_types=1);

/*
 * Makes the Pier PHP API available to an example worker. Every worker starts with
 * `require __DIR__ . '/../bootstrap.php';` and is started by examples/php-worker, which loads the
 * extension or not (see there). When the extension is loaded its classes are used; otherwise the
 * pure-PHP package in php-client/ is loaded through Composer's autoloader (vendor/autoload.php, after
 * `composer install` or `composer dump-autoload`) or, without vendor/, through the same PSR-4 mapping
 * registered here. One line on stderr says which implementation serves this worker.
 */

(static function (): void {
    $wanted = getenv('PIER_WORKER_IMPL') ?: 'auto';
    $fail = static function (string $message): never {
        fwrite(STDERR, "pier example worker: {$message}\n");
        exit(1);
    };

    if (extension_loaded('pier')) {
        if ($wanted === 'package') {
            $fail('PIER_WORKER_IMPL=package, but the pier extension is loaded by an ini file (php --ini)');
        }
        if (!class_exists(\Pier\Tcp\TcpWorker::class, false)) {
            $fail('the loaded pier extension defines no Pier\\Tcp\\TcpWorker: rebuild it (./dev.sh build)');
        }
        $using = 'the pier extension ' . (phpversion('pier') ?: '');
    } else {
        if ($wanted === 'ext') {
            $fail('PIER_WORKER_IMPL=ext, but the pier extension is not loaded');
        }
        $root = dirname(__DIR__);
        if (is_file("{$root}/vendor/autoload.php")) {
            require_once "{$root}/vendor/autoload.php";
        } else {
            // The mapping of the root composer.json: Pier\ → php-client/src/.
            spl_autoload_register(static function (string $class) use ($root): void {
                if (str_starts_with($class, 'Pier\\')) {
                    $file = "{$root}/php-client/src/" . strtr(substr($class, 5), '\\', '/') . '.php';
                    if (is_file($file)) {
                        require_once $file;
                    }
                }
            });
        }
        if (!class_exists(\Pier\Tcp\TcpWorker::class)) {
            $fail("neither the pier extension nor the pure-PHP package ({$root}/php-client/src) is available");
        }
        $using = 'the pure-PHP package pier/worker';
    }
    fwrite(STDERR, sprintf("pier example worker %d: Pier API from %s\n", getmypid(), trim($using)));
})();
