//! The gateway's request parser (`POST /v1/chat/completions`): any body is either a request
//! or a 400 with OpenAI's error shape, never a panic. An accepted request's `response_format`
//! then judges an answer (the text after the first NUL byte) without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|bytes: &[u8]| {
    let (body, answer) = match bytes.iter().position(|&b| b == 0) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &b""[..]),
    };
    let answer = String::from_utf8_lossy(answer);
    match keel_server::parse_chat_request(body, &answer) {
        Ok(_problems) => {}
        Err((status, error)) => {
            assert_eq!(status, 400, "{error}");
            let error = &error["error"];
            assert!(error["message"].is_string(), "{error}");
            assert!(error["type"].is_string(), "{error}");
            assert!(error["code"].is_string(), "{error}");
            assert!(
                matches!(error["param"], Value::Null | Value::String(_)),
                "{error}"
            );
        }
    }
});
