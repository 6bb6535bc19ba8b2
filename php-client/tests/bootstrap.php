<?php

declare(strict_types=1);

// Autoloading for the tests and their child workers, without Composer: Pier\ from src/ (asked only for
// what the pier extension does not define when it is loaded), Pier\Tests\ from tests/.
spl_autoload_register(static function (string $class): void {
    foreach (['Pier\\Tests\\' => __DIR__ . '/', 'Pier\\' => \dirname(__DIR__) . '/src/'] as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = $dir . str_replace('\\', '/', substr($class, \strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }

            return;
        }
    }
});
