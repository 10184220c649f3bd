//! Configuration files: TOML text to `Config` exactly as `Config::load` does
//! (UTF-8 text, `toml::from_str`, then `validate`), and the settings the engine
//! derives from a valid config. Must return errors, never panic.
//! (`Config::load` itself only adds reading the file.)

#![no_main]

use fieldcrypt::config::Config;
use fieldcrypt::kafka::route::Router;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `Config::load` reads the file with `read_to_string`: UTF-8 or an error.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    match cfg.validate() {
        Ok(()) => {
            let _ = cfg.plan_config();
            let _ = cfg.dek_settings();
            let _ = cfg.index_settings();
            let _ = cfg.kms.retry_policy();
            let _ = cfg.kms.kek_ref("aws:alias/x");
            let router = Router::new(&cfg.routes).expect("validate accepted routes the router rejects");
            let _ = router.subscriptions();
            for r in &cfg.routes {
                let _ = r.dek_scope();
                // Route a topic the source names (exact routes) through the router.
                if !r.source.starts_with('^') {
                    let _ = router.route(&r.source);
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
