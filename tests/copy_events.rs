//! Copying events between stores: given timestamps and schema identities are recorded, and the
//! log's timestamps still never go backwards.

use varvedb::{Error, ExpectedVersion, NewEvent, Varve};

#[test]
fn given_timestamps_are_kept_and_never_go_backwards() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = Varve::open(dir.path())?;
    db.append(
        1u128,
        ExpectedVersion::NoStream,
        [
            NewEvent::new("a", b"1".to_vec()).with_timestamp(1_000),
            NewEvent::new("a", b"2".to_vec()).with_timestamp(2_000),
        ],
    )?;
    // Below the newest recorded time: raised to it.
    db.append(2u128, ExpectedVersion::NoStream, [NewEvent::new("a", b"3".to_vec()).with_timestamp(1_500)])?;
    // Without a given time: the commit's, which is now.
    db.append(2u128, ExpectedVersion::Auto, [NewEvent::new("a", b"4".to_vec())])?;
    let view = db.begin_read()?;
    let times: Vec<u64> = (1..=4)
        .map(|s| view.event(s).map(|e| e.expect("stored").timestamp_micros()))
        .collect::<Result<_, _>>()?;
    assert_eq!(&times[..3], [1_000, 2_000, 2_000]);
    assert!(times[3] > 1_700_000_000_000_000, "{times:?}");
    drop(view);
    drop(db);
    // After a reopen too: the newest stored time is the floor.
    let db = Varve::open(dir.path())?;
    db.append(3u128, ExpectedVersion::NoStream, [NewEvent::new("a", b"5".to_vec()).with_timestamp(5)])?;
    assert_eq!(db.begin_read()?.event(5)?.expect("stored").timestamp_micros(), times[3]);
    Ok(())
}

#[test]
fn given_schemas_are_registered_and_checked() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = Varve::open(dir.path())?;
    db.append(1u128, ExpectedVersion::NoStream, [NewEvent::new("t", b"x".to_vec()).with_schema(2, 0xfeed)])?;
    let view = db.begin_read()?;
    assert_eq!(view.event(1)?.expect("stored").schema_version(), 2);
    assert_eq!(view.schema_fingerprint("t", 2)?, Some(0xfeed));
    // Copied events carry no layout description.
    assert_eq!(view.schema_layout("t", 2)?, None);
    drop(view);
    let other =
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("t", b"y".to_vec()).with_schema(2, 0xbeef)]);
    assert!(matches!(other, Err(Error::SchemaMismatch { stored: 0xfeed, found: 0xbeef, .. })), "{other:?}");
    assert_eq!(db.begin_read()?.last_seq()?, 1);
    Ok(())
}
