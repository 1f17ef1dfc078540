//! Fuzzes frame and message decoding: any bytes, read as a stream of frames of every message type
//! in both body codecs, must give messages or typed errors, never a panic or a huge allocation.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tatzelwurm_protocol::*;
use tokio_util::codec::Decoder;

fn drain<T: serde::de::DeserializeOwned>(codec: BodyCodec, data: &[u8]) {
    let mut dec = MessageCodec::<T, ()>::new(codec, 1 << 20);
    let mut buf = BytesMut::from(data);
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => {
                let _ = dec.decode_eof(&mut buf);
                return;
            }
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    drain::<Hello>(BodyCodec::Msgpack, data);
    drain::<HelloReply>(BodyCodec::Msgpack, data);
    for codec in [BodyCodec::Msgpack, BodyCodec::Bincode] {
        drain::<ActionerToCoordinator>(codec, data);
        drain::<CoordinatorToActioner>(codec, data);
        drain::<WorkerToCoordinator>(codec, data);
        drain::<CoordinatorToWorker>(codec, data);
        // The body alone, as a frame's contents.
        let _ = codec.decode::<WorkerToCoordinator>(data);
        let _ = codec.decode::<ActionerToCoordinator>(data);
    }
});
