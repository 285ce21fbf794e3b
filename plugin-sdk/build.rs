//! Embeds the WIT contract into the SDK's macros, so a plugin crate gets its bindings from one
//! macro call and never points wit-bindgen at a file of its own.

use std::{env, fs, path::PathBuf};

fn main() {
    let wit = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../wit/plugin.wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let text = fs::read_to_string(&wit).expect("plugin-sdk needs ../wit/plugin.wit");
    assert!(!text.contains("\"#"), "the WIT text must fit in a raw string literal");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings_macro.rs");
    let code = format!(
        r####"/// Generates the wit-bindgen bindings of one `wasmtx:plugin` world in the calling crate.
#[doc(hidden)]
#[macro_export]
macro_rules! __wasmtx_bindings {{
    ($world:tt) => {{
        $crate::__private::wit_bindgen::generate!({{
            inline: r#"{text}"#,
            world: $world,
            runtime_path: "::wasmtx_plugin_sdk::__private::wit_bindgen::rt",
        }});
    }};
}}
"####
    );
    fs::write(out, code).unwrap();
}
