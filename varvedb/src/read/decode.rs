//! Decoding a stored record into an event: the checksum, the payload blob, and in an
//! encrypted store the stream's data key and the opening of the sealed body.

use crate::crypto::{self, Master, StreamKey};
use crate::error::Error;
use crate::event::RecordedEvent;
use crate::id::StreamId;
use crate::record::{self, Body, Content, Envelope, Verified};
use crate::storage::key;

use super::ReadView;

impl ReadView<'_> {
    /// The event of the verified record `checked`, handed to `f`. Every read of an event
    /// goes through here: the common record of a store without encryption (in the clear,
    /// payload inline) is built in place, where `f` reads it; every other record, and every
    /// error, takes [`decode_general`](Self::decode_general), out of line. An encrypted
    /// record is opened into the buffer `plain(len)` returns, and only after it
    /// authenticates is any of it visible.
    // Inlined into each read, the common event is built where the caller keeps it (an
    // iterator's item, a fold's argument) instead of on the stack and copied.
    #[expect(clippy::inline_always, reason = "the copy it avoids is on every event of a scan")]
    #[inline(always)]
    pub(super) fn with_event<'a, R>(
        &'a self,
        checked: Verified<'a>,
        plain: impl FnOnce(usize) -> &'a mut [u8],
        f: impl FnOnce(RecordedEvent<'a>) -> R,
    ) -> Result<R, Error> {
        if self.crypto.is_none()
            && let Some((head, metadata, payload)) = record::plain_inline(checked)
        {
            return Ok(f(RecordedEvent::new(checked.seq(), &head, metadata, payload, false)));
        }
        self.decode_general(checked, plain).map(|event| f(event.rebuilt()))
    }

    /// The event of a record whose checksum is verified, whatever its kind.
    #[inline(never)]
    fn decode_general<'a>(
        &'a self,
        checked: Verified<'a>,
        plain: impl FnOnce(usize) -> &'a mut [u8],
    ) -> Result<RecordedEvent<'a>, Error> {
        let seq = checked.seq();
        let corrupt = |reason: &str| Error::Corrupt { seq, reason: reason.to_owned() };
        let env = Envelope::decode_checked(checked)?;
        let head = env.head;
        let (metadata, payload, shredded): (&'a [u8], &'a [u8], bool) = match (env.content, &self.crypto) {
            (Content::Plain { metadata, body }, None) => (metadata, self.body(seq, body)?, false),
            (Content::Plain { .. }, Some(_)) => {
                // Every record of an encrypted store is sealed; one in the clear was forged
                // (for example by clearing the flag), and its bytes must not pass as plaintext.
                return Err(corrupt("an unencrypted record in an encrypted store"));
            }
            (Content::Sealed { .. }, None) => {
                return Err(corrupt("an encrypted record in an unencrypted store"));
            }
            (Content::Sealed { metadata_len, payload_len, aad_head, body }, Some(crypto)) => {
                let mut keys = crypto.keys.borrow_mut();
                let key = match keys.get(&head.stream) {
                    Some(key) => key,
                    None => {
                        let key = self.load_key(&crypto.master, head.stream)?;
                        keys.entry(head.stream).or_insert(key)
                    }
                };
                match key {
                    StreamKey::Shredded { last_version } => {
                        // Reporting "shredded" reads nothing, so it must not be what a damaged
                        // or forged record gets: the version must be one the stream had when
                        // it was shredded (bound into the marker), and the record exactly
                        // where the stream index says that stream's event of that version is.
                        if head.version > *last_version {
                            return Err(corrupt("a record names a shredded stream past its last version"));
                        }
                        let at = self.storage.index_seq(&self.txn, head.stream, head.version)?;
                        if at != Some(seq) {
                            return Err(corrupt(
                                "a record names a shredded stream the index does not place it in",
                            ));
                        }
                        // With the data key gone, the MAC made when it was shredded is what
                        // vouches for the clear header (type tag, timestamp, schema version).
                        let mac = self.storage.get(
                            &self.txn,
                            self.storage.tables.shredded_headers,
                            &key::seq(seq),
                        )?;
                        if !mac.is_some_and(|mac| {
                            crypto::constant_time_eq(mac, &crypto.master.header_mac(seq, aad_head))
                        }) {
                            return Err(corrupt("the clear header of a shredded event fails authentication"));
                        }
                        (&[][..], &[][..], true)
                    }
                    StreamKey::Key(key) => {
                        let sealed = self.body(seq, body)?;
                        let len = metadata_len as usize + payload_len as usize;
                        let out = plain(len);
                        record::open_sealed(key, seq, aad_head, sealed, out)?;
                        let out: &'a [u8] = out;
                        let (metadata, payload) = out.split_at(metadata_len as usize);
                        (metadata, payload, false)
                    }
                }
            }
        };
        Ok(RecordedEvent::new(seq, &head, metadata, payload, shredded))
    }

    /// The data key of `stream` in this snapshot, or its shredded marker.
    pub(super) fn load_key(&self, master: &Master, stream: u128) -> Result<StreamKey, Error> {
        let wrapped = self.storage.get(&self.txn, self.storage.tables.keys, &key::stream(stream))?.ok_or(
            Error::CorruptKey {
                stream: StreamId::from(stream),
                reason: "the stream has encrypted events but no stored key",
            },
        )?;
        master.unwrap(stream, wrapped)
    }

    #[inline]
    fn body<'a>(&'a self, seq: u64, body: Body<'a>) -> Result<&'a [u8], Error> {
        match body {
            Body::Inline(p) => Ok(p),
            Body::Blob { hash, len } => self.storage.blob(&self.txn, seq, hash, len),
        }
    }
}
