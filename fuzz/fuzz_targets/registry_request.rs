//! Arbitrary bytes into every parser of what clients send the registry: the registration,
//! heartbeat and certificate-signing bodies, the query string, and the name and address
//! rules shared with clients. None may panic, and what the API accepts must hold up:
//! an accepted registration passes the checks snapshots are loaded with, and survives a
//! round trip through its JSON form unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_registry::request;
use mesh_registry_api::validate;

fuzz_target!(|data: &[u8]| {
    if let Ok(registration) = request::registration(data) {
        if let Err(e) = request::check_registration(&registration) {
            panic!("the API accepted {registration:?}, which its own checks refuse: {e}");
        }
        let json = serde_json::to_vec(&registration).expect("a registration serializes");
        match request::registration(&json) {
            Ok(again) => assert_eq!(again, registration, "round trip through {json:?}"),
            Err(e) => panic!("{registration:?} does not parse back from {json:?}: {e}"),
        }
    }
    if let Ok(heartbeat) = request::heartbeat(data) {
        assert!(request::check_output(heartbeat.output.as_deref()).is_ok());
    }
    if let Ok(sign) = request::sign_request(data) {
        assert!(validate::service_name(&sign.service).is_ok());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = request::query(Some(text));
        let _ = validate::service_name(text);
        let _ = validate::instance_id(text);
        let _ = validate::address(text);
        if let Some(service) = mesh_registry_api::service_of("mesh.local", text) {
            assert!(validate::service_name(&service).is_ok());
        }
    }
});
