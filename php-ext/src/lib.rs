//! The `pier` PHP extension.

use ext_php_rs::prelude::*;

#[php_module]
pub fn get_module(module: ModuleBuilder<'_>) -> ModuleBuilder<'_> {
    module
}
