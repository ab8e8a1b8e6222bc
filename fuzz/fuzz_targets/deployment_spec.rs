//! A deployment request as the scheduler receives it from any client: protobuf bytes decoded,
//! turned into a spec and validated. Whatever the bytes, this returns an error or a valid spec;
//! it never panics, and a spec it accepts passes validation again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sov_proto::v1::ApplyDeploymentRequest;
use sov_scheduler::api::deployments::spec_from_pb;
use sov_scheduler::state::validate_spec;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ApplyDeploymentRequest::decode(data) else {
        return;
    };
    let Some(spec) = request.spec else {
        return;
    };
    if let Ok(spec) = spec_from_pb(spec)
        && validate_spec(&spec).is_ok()
    {
        assert!(validate_spec(&spec.clone()).is_ok());
    }
});
