<?php

declare(strict_types=1);

if (!extension_loaded('pier')) {
    fwrite(STDERR, "the pier extension is not loaded: run through ./dev.sh test (PHP_INI_SCAN_DIR with target/php-ini)\n");
    exit(1);
}

require __DIR__ . '/Support/Frames.php';
require __DIR__ . '/Support/Child.php';
