use proptest::prelude::*;

use super::*;

/// A small stream: subvol, mkfile, write, utimes, end.
fn stream(version: u32) -> (Vec<u8>, Vec<u64>) {
    let mut bytes = header(version);
    let mut offsets = Vec::new();
    let mut time = 1_700_000_000u64.to_le_bytes().to_vec();
    time.extend(5u32.to_le_bytes());
    let commands = [
        encode(
            Kind::Subvol,
            &[
                (Attribute::Path, b"home.2026".to_vec()),
                (Attribute::Uuid, vec![7; 16]),
                (Attribute::Ctransid, 42u64.to_le_bytes().to_vec()),
            ],
        ),
        encode(
            Kind::Mkfile,
            &[
                (Attribute::Path, b"o257-5-0".to_vec()),
                (Attribute::Ino, 257u64.to_le_bytes().to_vec()),
            ],
        ),
        encode(
            Kind::Write,
            &[
                (Attribute::Path, b"o257-5-0".to_vec()),
                (Attribute::FileOffset, 0u64.to_le_bytes().to_vec()),
                (Attribute::Data, b"hello".to_vec()),
            ],
        ),
        encode(
            Kind::Utimes,
            &[
                (Attribute::Path, b"o257-5-0".to_vec()),
                (Attribute::Atime, time.clone()),
                (Attribute::Mtime, time.clone()),
                (Attribute::Ctime, time),
            ],
        ),
        encode(Kind::End, &[]),
    ];
    for command in commands {
        offsets.push(bytes.len() as u64);
        bytes.extend(command);
    }
    (bytes, offsets)
}

fn parse_all(bytes: &[u8]) -> Result<Vec<Command>, Error> {
    let mut parser = Parser::new(bytes)?;
    let mut commands = Vec::new();
    while let Some(command) = parser.next_command()? {
        commands.push(command);
    }
    Ok(commands)
}

#[test]
fn a_stream_reads_command_by_command() {
    let (bytes, offsets) = stream(1);
    let commands = parse_all(&bytes).unwrap();
    let kinds: Vec<Kind> = commands.iter().map(Command::kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Subvol,
            Kind::Mkfile,
            Kind::Write,
            Kind::Utimes,
            Kind::End
        ]
    );
    assert_eq!(
        commands.iter().map(Command::offset).collect::<Vec<_>>(),
        offsets
    );
    assert_eq!(
        commands[0].uuid(Attribute::Uuid).unwrap(),
        Uuid::from_bytes([7; 16])
    );
    assert_eq!(commands[0].u64(Attribute::Ctransid).unwrap(), 42);
    assert_eq!(commands[2].required(Attribute::Data).unwrap(), b"hello");
    assert_eq!(
        commands[3].timespec(Attribute::Mtime).unwrap(),
        Timespec {
            seconds: 1_700_000_000,
            nanoseconds: 5
        }
    );
    let missing = commands[1].required(Attribute::Mode).unwrap_err();
    assert!(missing.to_string().contains("Mkfile"), "{missing}");
}

#[test]
fn protocol_2_data_runs_to_the_end_of_its_command() {
    let mut bytes = header(2);
    // A write whose data attribute has no length.
    let mut body = Vec::new();
    body.extend(Attribute::Path.number().to_le_bytes());
    body.extend(1u16.to_le_bytes());
    body.push(b'f');
    body.extend(Attribute::Data.number().to_le_bytes());
    body.extend(vec![9u8; 70_000]);
    let mut command = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    command.extend(Kind::Write.number().to_le_bytes());
    command.extend([0u8; 4]);
    command.extend(&body);
    let crc = crc32c(0, &command);
    command[6..10].copy_from_slice(&crc.to_le_bytes());
    bytes.extend(command);
    bytes.extend(encode(Kind::End, &[]));
    let commands = parse_all(&bytes).unwrap();
    assert_eq!(commands[0].required(Attribute::Data).unwrap().len(), 70_000);
    assert_eq!(commands[0].path(Attribute::Path).unwrap(), b"f");
}

#[test]
fn what_is_not_a_stream_is_told_apart() {
    let (bytes, offsets) = stream(1);
    assert!(matches!(parse_all(b"hello"), Err(Error::NotAStream)));
    assert!(matches!(
        parse_all(&header(3)),
        Err(Error::UnsupportedVersion { version: 3 })
    ));
    // Without its end command.
    let cut = &bytes[..usize::try_from(offsets[4]).unwrap()];
    assert!(matches!(
        parse_all(cut),
        Err(Error::Truncated {
            what: "no end command",
            ..
        })
    ));
    // An unknown command, with a good checksum.
    let mut unknown = header(1);
    let mut command = encode(Kind::End, &[]);
    command[4..6].copy_from_slice(&99u16.to_le_bytes());
    command[6..10].fill(0);
    let crc = crc32c(0, &command);
    command[6..10].copy_from_slice(&crc.to_le_bytes());
    unknown.extend(command);
    let error = parse_all(&unknown).unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnknownCommand {
                offset: 17,
                command: 99
            }
        ),
        "{error}"
    );
    // A length no stream has.
    let mut huge = header(1);
    huge.extend((MAX_COMMAND + 1).to_le_bytes());
    huge.extend([0u8; 6]);
    assert!(matches!(
        parse_all(&huge),
        Err(Error::TooLarge { offset: 17, .. })
    ));
}

proptest! {
    /// Any one byte changed after the header is found, in the command it belongs to (or the
    /// stream is no longer one: a length or a command number changed).
    #[test]
    fn a_damaged_byte_is_found_in_its_command(
        version in 1u32..=2,
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let (mut bytes, offsets) = stream(version);
        let at = 17 + at.index(bytes.len() - 17);
        bytes[at] ^= flip;
        let command = offsets.iter().rev().find(|&&o| o <= at as u64).copied().unwrap_or(17);
        match parse_all(&bytes) {
            Ok(commands) => prop_assert!(false, "damage at {at} not found: {commands:?}"),
            Err(Error::BadChecksum { offset, .. }) => prop_assert_eq!(offset, command),
            Err(Error::Truncated { .. } | Error::TooLarge { .. } | Error::BadAttribute { .. }) => {
                // The length field itself was hit.
                prop_assert!(at < usize::try_from(command).unwrap() + 4, "{at}");
            }
            Err(other) => prop_assert!(false, "{other}"),
        }
    }

    /// A stream cut anywhere is never read as whole.
    #[test]
    fn a_cut_stream_is_an_error(version in 1u32..=2, at in any::<prop::sample::Index>()) {
        let (bytes, _) = stream(version);
        let at = at.index(bytes.len());
        prop_assert!(parse_all(&bytes[..at]).is_err());
    }
}
