//! Signed notes (C2SP `signed-note`, as `golang.org/x/mod/sumdb/note` reads and writes
//! them) with Ed25519 keys, and checkpoints (C2SP `tlog-checkpoint`) carried in them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The signature algorithm byte of an Ed25519 note key.
const ALG_ED25519: u8 = 1;
/// What starts a signature line: an em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// Most signature lines a note may carry, as the Go implementation allows.
const MAX_SIGNATURES: usize = 100;

/// Why a signed note or a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The note is not in the signed-note format: the reason says where.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// The key name is empty or holds a space or a `+`.
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    InvalidName(String),
    /// The verifier key is not `<name>+<hex key id>+<base64 key>` for an Ed25519 key, or
    /// its key id does not match the key.
    #[error("invalid verifier key: {0}")]
    InvalidVerifierKey(&'static str),
    /// No signature line is by the verifier key.
    #[error("the note has no signature by {name}+{key_id:08x}")]
    NotSigned {
        /// The key's name.
        name: String,
        /// The key's id.
        key_id: u32,
    },
    /// A signature line is by the verifier key (its name and id) but does not verify.
    #[error("the signature by {name}+{key_id:08x} does not verify: the note was changed or forged")]
    BadSignature {
        /// The key's name.
        name: String,
        /// The key's id.
        key_id: u32,
    },
    /// The note's text is not a checkpoint: origin, tree size, root hash, one per line.
    #[error("not a checkpoint: {0}")]
    NotACheckpoint(&'static str),
}

/// Whether `name` may name a key: non-empty, no whitespace, no `+`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// Whether `text` may be a note's text: ends in a newline, no control characters but
/// newlines.
fn valid_text(text: &str) -> bool {
    text.ends_with('\n') && !text.chars().any(|c| c < ' ' && c != '\n')
}

/// The key id: the first 4 bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`, big-endian.
fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public);
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A key that signs notes and checkpoints: an Ed25519 key with a name.
///
/// ```
/// use varvedb::NoteSigner;
/// let signer = NoteSigner::new("audit.example/log", [7; 32])?;
/// let note = signer.sign("hello\n")?;
/// assert_eq!(varvedb::open_note(&note, &signer.verifier_key())?, "hello\n");
/// # Ok::<(), varvedb::NoteError>(())
/// ```
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    id: u32,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer named `name` with the Ed25519 private key `secret` (its 32-byte seed).
    ///
    /// # Errors
    /// [`NoteError::InvalidName`] if the name is empty or holds a space or a `+`.
    pub fn new(name: impl Into<String>, secret: [u8; 32]) -> Result<Self, NoteError> {
        let name = name.into();
        if !valid_name(&name) {
            return Err(NoteError::InvalidName(name));
        }
        let key = SigningKey::from_bytes(&secret);
        let id = key_id(&name, key.verifying_key().as_bytes());
        Ok(NoteSigner { name, key, id })
    }

    /// The key's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key to give to those who check the notes:
    /// `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
    #[must_use]
    pub fn verifier_key(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.verifying_key().as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, BASE64.encode(key))
    }

    /// Signs `text`: the note is the text, a blank line, and the signature line.
    ///
    /// # Errors
    /// [`NoteError::Malformed`] if the text does not end in a newline or holds control
    /// characters other than newlines.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !valid_text(text) {
            return Err(NoteError::Malformed(
                "the text must end in a newline and hold no control characters",
            ));
        }
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!("{text}\n{SIG_PREFIX}{} {}\n", self.name, BASE64.encode(blob)))
    }

    /// Signs a checkpoint of the tree `(size, root)` of the log named `origin`.
    ///
    /// # Errors
    /// [`NoteError::NotACheckpoint`] if `origin` is empty or holds a newline.
    pub fn sign_checkpoint(&self, checkpoint: &Checkpoint) -> Result<String, NoteError> {
        self.sign(&checkpoint.text()?)
    }
}

/// A parsed verifier key.
struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    fn parse(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::InvalidVerifierKey("not <name>+<key id>+<key>"));
        };
        if !valid_name(name) {
            return Err(NoteError::InvalidVerifierKey("the name is empty or holds a space or '+'"));
        }
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(NoteError::InvalidVerifierKey("the key id is not 8 lowercase hex digits"));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| NoteError::InvalidVerifierKey("bad key id"))?;
        let key = BASE64.decode(key).map_err(|_| NoteError::InvalidVerifierKey("the key is not base64"))?;
        let Some((&ALG_ED25519, public)) = key.split_first() else {
            return Err(NoteError::InvalidVerifierKey("not an Ed25519 key (algorithm byte 1)"));
        };
        let public: [u8; 32] =
            public.try_into().map_err(|_| NoteError::InvalidVerifierKey("an Ed25519 key is 32 bytes"))?;
        if key_id(name, &public) != id {
            return Err(NoteError::InvalidVerifierKey("the key id does not match the name and key"));
        }
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::InvalidVerifierKey("not a valid Ed25519 public key"))?;
        Ok(NoteVerifier { name: name.to_owned(), id, key })
    }
}

/// Checks a signed note against a verifier key and returns its text.
///
/// As `golang.org/x/mod/sumdb/note` does: the note is UTF-8 text without control
/// characters other than newlines; its last blank line separates the text from the
/// signature lines, each `— <name> <base64(key id ‖ signature)>`; signatures by other keys
/// are ignored; the note is accepted if one signature is by this key and verifies, refused
/// if one by this key does not.
///
/// # Errors
/// [`NoteError::Malformed`], [`NoteError::InvalidVerifierKey`],
/// [`NoteError::NotSigned`] or [`NoteError::BadSignature`].
pub fn open_note(note: &str, verifier_key: &str) -> Result<String, NoteError> {
    let verifier = NoteVerifier::parse(verifier_key)?;
    if note.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control characters in the note"));
    }
    let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    if signatures.is_empty() || !signatures.ends_with('\n') {
        return Err(NoteError::Malformed("the signatures do not end in a newline"));
    }
    let mut signed = false;
    for (count, line) in signatures[..signatures.len() - 1].split('\n').enumerate() {
        if count >= MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or(NoteError::Malformed("a signature line lacks its em dash"))?;
        let (name, blob) =
            rest.split_once(' ').ok_or(NoteError::Malformed("a signature line lacks its signature"))?;
        if !valid_name(name) {
            return Err(NoteError::Malformed("a signature line's key name is invalid"));
        }
        let blob = BASE64.decode(blob).map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        if blob.len() < 5 {
            return Err(NoteError::Malformed("a signature is too short"));
        }
        let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
        if name != verifier.name || id != verifier.id {
            continue;
        }
        let bad = || NoteError::BadSignature { name: name.to_owned(), key_id: id };
        let signature = Signature::from_slice(&blob[4..]).map_err(|_| bad())?;
        verifier.key.verify(text.as_bytes(), &signature).map_err(|_| bad())?;
        signed = true;
    }
    if signed {
        Ok(text.to_owned())
    } else {
        Err(NoteError::NotSigned { name: verifier.name, key_id: verifier.id })
    }
}

/// A checkpoint (C2SP `tlog-checkpoint`): the log's origin, a tree size and the root of the
/// tree of that size. Its text is `<origin>\n<size>\n<base64 root>\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checkpoint {
    /// The log's name, conventionally a URL without scheme.
    pub origin: String,
    /// The number of events the tree covers.
    pub size: u64,
    /// The root hash of the tree of `size` leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// A checkpoint of the tree `(size, root)` of the log named `origin`.
    #[must_use]
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Self {
        Checkpoint { origin: origin.into(), size, root }
    }

    /// The checkpoint's text, the body of its note.
    ///
    /// # Errors
    /// [`NoteError::NotACheckpoint`] if the origin is empty or holds a control character.
    pub fn text(&self) -> Result<String, NoteError> {
        if self.origin.is_empty() || self.origin.chars().any(char::is_control) {
            return Err(NoteError::NotACheckpoint("the origin is empty or holds a control character"));
        }
        Ok(format!("{}\n{}\n{}\n", self.origin, self.size, BASE64.encode(self.root)))
    }

    /// Parses a checkpoint's text (extension lines after the root are allowed and ignored).
    ///
    /// # Errors
    /// [`NoteError::NotACheckpoint`].
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let body = text.strip_suffix('\n').ok_or(NoteError::NotACheckpoint("does not end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(NoteError::NotACheckpoint("no origin"))?;
        let size = lines.next().ok_or(NoteError::NotACheckpoint("no tree size"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(NoteError::NotACheckpoint("the tree size is not a decimal number"));
        }
        let size = size.parse().map_err(|_| NoteError::NotACheckpoint("the tree size is too large"))?;
        let root = lines.next().ok_or(NoteError::NotACheckpoint("no root hash"))?;
        let root =
            BASE64.decode(root).map_err(|_| NoteError::NotACheckpoint("the root hash is not base64"))?;
        let root = root.try_into().map_err(|_| NoteError::NotACheckpoint("the root hash is not 32 bytes"))?;
        if lines.any(str::is_empty) {
            return Err(NoteError::NotACheckpoint("an empty extension line"));
        }
        Ok(Checkpoint { origin: origin.to_owned(), size, root })
    }

    /// Checks a signed checkpoint note against a verifier key and parses it.
    ///
    /// # Errors
    /// Those of [`open_note`], and [`NoteError::NotACheckpoint`].
    pub fn open(note: &str, verifier_key: &str) -> Result<Self, NoteError> {
        Checkpoint::parse(&open_note(note, verifier_key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// golang.org/x/mod/sumdb/note's example key and note.
    const SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const SIG: &str =
        "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";

    fn peter() -> NoteSigner {
        let seed = BASE64.decode(SKEY.splitn(5, '+').nth(4).unwrap()).unwrap();
        assert_eq!(seed[0], ALG_ED25519);
        NoteSigner::new("PeterNeumann", seed[1..].try_into().unwrap()).unwrap()
    }

    #[test]
    fn the_go_example_note_is_signed_and_opened_byte_for_byte() {
        let signer = peter();
        assert_eq!(signer.verifier_key(), VKEY);
        let note = format!("{TEXT}\n\u{2014} PeterNeumann {SIG}\n");
        assert_eq!(signer.sign(TEXT).unwrap(), note);
        assert_eq!(open_note(&note, VKEY).unwrap(), TEXT);
        let changed = note.replace("cryptography", "cryptographY");
        assert!(matches!(open_note(&changed, VKEY), Err(NoteError::BadSignature { .. })));
    }

    #[test]
    fn other_keys_signatures_are_ignored_but_one_by_the_key_is_needed() {
        let other = NoteSigner::new("EnochRoot", [9; 32]).unwrap();
        let note = peter().sign(TEXT).unwrap();
        let both = format!("{note}{}", other.sign(TEXT).unwrap().rsplit_once("\n\n").unwrap().1);
        assert_eq!(open_note(&both, VKEY).unwrap(), TEXT);
        assert_eq!(open_note(&both, &other.verifier_key()).unwrap(), TEXT);
        assert!(matches!(open_note(&other.sign(TEXT).unwrap(), VKEY), Err(NoteError::NotSigned { .. })));
    }

    #[test]
    fn malformed_notes_and_keys_are_refused() {
        let note = peter().sign(TEXT).unwrap();
        for bad in [
            note.replace('\u{2014}', "-"),
            note.trim_end().to_owned(),
            note.replace("\n\n", "\n"),
            note.replace("problem,", "problem,\u{7}"),
        ] {
            assert!(open_note(&bad, VKEY).is_err(), "{bad:?}");
        }
        for bad in [
            &VKEY[..VKEY.len() - 2],
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "x",
        ] {
            assert!(matches!(open_note(&note, bad), Err(NoteError::InvalidVerifierKey(_))), "{bad}");
        }
        assert!(NoteSigner::new("a b", [1; 32]).is_err());
        assert!(peter().sign("no newline").is_err());
    }

    #[test]
    fn checkpoints_round_trip_and_strict_parsing() {
        let cp = Checkpoint::new("example.com/log", 42, [3; 32]);
        let note = peter().sign_checkpoint(&cp).unwrap();
        assert_eq!(Checkpoint::open(&note, VKEY).unwrap(), cp);
        let text = cp.text().unwrap();
        assert_eq!(Checkpoint::parse(&format!("{text}ext\n")).unwrap(), cp);
        for bad in ["example.com/log\n042\nAwMD\n", "\n1\nAAAA\n", "o\n1\nAwMD\n", "o\n1\n", "o\n-1\nAAAA\n"]
        {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
