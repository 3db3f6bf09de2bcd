//! Tar header encoding, byte-compatible with Python's `tarfile` in `PAX_FORMAT`.
//!
//! Why not tar-rs's `Builder`: the pure-Python twin (`layercore.reference`) is our differential
//! oracle and must produce the *same bytes*, so the header layout is fixed by `tarfile`
//! (`TarInfo.create_pax_header`, `_create_pax_generic_header`, `_create_header` in CPython 3.11):
//! a `././@PaxHeader` extended header when a value does not fit ustar, records in tarfile's order,
//! `hdrcharset=BINARY` when a value is not UTF-8, octal fields with a trailing NUL.

use super::BLOCK;

pub const REGTYPE: u8 = b'0';
pub const LNKTYPE: u8 = b'1';
pub const SYMTYPE: u8 = b'2';
pub const CHRTYPE: u8 = b'3';
pub const BLKTYPE: u8 = b'4';
pub const DIRTYPE: u8 = b'5';
pub const FIFOTYPE: u8 = b'6';
pub const XHDTYPE: u8 = b'x';

const LENGTH_NAME: usize = 100;
const LENGTH_LINK: usize = 100;
const LENGTH_OWNER: usize = 32;

/// The metadata of one entry, as it goes into the archive.
#[derive(Clone, Debug, Default)]
pub struct HeaderSpec<'a> {
    /// Archive name; directories carry a trailing `/`.
    pub name: &'a [u8],
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub linkname: &'a [u8],
    pub uname: &'a [u8],
    pub gname: &'a [u8],
    pub devmajor: u32,
    pub devminor: u32,
    /// Extended attributes, already sorted by name.
    pub xattrs: &'a [(String, Vec<u8>)],
}

/// Appends the header block(s) for `spec` to `out`: a PAX extended header with its records when
/// needed, then the ustar block. The entry's data (and its padding) is the caller's to write.
pub fn encode(spec: &HeaderSpec<'_>, out: &mut Vec<u8>) {
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (name, value) in spec.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name.as_bytes());
        pax.push((key, value.clone()));
    }
    for (field, key, limit) in [
        (spec.name, &b"path"[..], LENGTH_NAME),
        (spec.linkname, b"linkpath", LENGTH_LINK),
        (spec.uname, b"uname", LENGTH_OWNER),
        (spec.gname, b"gname", LENGTH_OWNER),
    ] {
        if !field.is_ascii() || field.len() > limit {
            pax.push((key.to_vec(), field.to_vec()));
        }
    }
    let mut uid = spec.uid as i128;
    let mut gid = spec.gid as i128;
    let mut size = spec.size as i128;
    let mut mtime = spec.mtime as i128;
    for (value, key, digits) in [
        (&mut uid, &b"uid"[..], 8u32),
        (&mut gid, b"gid", 8),
        (&mut size, b"size", 12),
        (&mut mtime, b"mtime", 12),
    ] {
        if !(0..8i128.pow(digits - 1)).contains(value) {
            pax.push((key.to_vec(), value.to_string().into_bytes()));
            *value = 0;
        }
    }

    if !pax.is_empty() {
        let records = pax_records(&pax);
        let ext = HeaderSpec {
            name: b"././@PaxHeader",
            typeflag: XHDTYPE,
            size: records.len() as u64,
            ..HeaderSpec::default()
        };
        ustar_block(&ext, 0, 0, ext.size as i128, 0, out);
        out.extend_from_slice(&records);
        pad_to_block(out);
    }
    ustar_block(spec, uid, gid, size, mtime, out);
}

/// Zero bytes needed after `len` bytes of data to reach the next block boundary.
pub fn padding(len: u64) -> usize {
    let rem = (len % BLOCK as u64) as usize;
    if rem == 0 {
        0
    } else {
        BLOCK - rem
    }
}

fn pad_to_block(out: &mut Vec<u8>) {
    let n = padding(out.len() as u64);
    out.resize(out.len() + n, 0);
}

/// `"%d %s=%s\n"` records whose leading length counts itself, as tarfile computes it.
fn pax_records(pax: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let binary = pax.iter().any(|(_, v)| std::str::from_utf8(v).is_err());
    let mut records = Vec::new();
    if binary {
        records.extend_from_slice(b"21 hdrcharset=BINARY\n");
    }
    for (key, value) in pax {
        let l = key.len() + value.len() + 3;
        let mut p = 0usize;
        loop {
            let n = l + decimal_len(p);
            if n == p {
                break;
            }
            p = n;
        }
        records.extend_from_slice(p.to_string().as_bytes());
        records.push(b' ');
        records.extend_from_slice(key);
        records.push(b'=');
        records.extend_from_slice(value);
        records.push(b'\n');
    }
    records
}

fn decimal_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

fn ustar_block(
    spec: &HeaderSpec<'_>,
    uid: i128,
    gid: i128,
    size: i128,
    mtime: i128,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.resize(start + BLOCK, 0);
    let block = &mut out[start..start + BLOCK];
    ascii_field(&mut block[0..100], spec.name);
    octal(&mut block[100..108], (spec.mode & 0o7777) as i128);
    octal(&mut block[108..116], uid);
    octal(&mut block[116..124], gid);
    octal(&mut block[124..136], size);
    octal(&mut block[136..148], mtime);
    block[148..156].copy_from_slice(b"        ");
    block[156] = spec.typeflag;
    ascii_field(&mut block[157..257], spec.linkname);
    block[257..265].copy_from_slice(b"ustar\x0000");
    ascii_field(&mut block[265..297], spec.uname);
    ascii_field(&mut block[297..329], spec.gname);
    if spec.typeflag == CHRTYPE || spec.typeflag == BLKTYPE {
        octal(&mut block[329..337], spec.devmajor as i128);
        octal(&mut block[337..345], spec.devminor as i128);
    }
    let sum: u32 = block.iter().map(|&b| b as u32).sum();
    // "%06o\0" followed by the space already there.
    octal(&mut block[148..155], sum as i128);
}

/// `"%0*o" % (len-1, n) + NUL`; the caller guarantees the value fits. Written by hand: it runs
/// five times per entry and `format!` showed in profiles of small-file trees.
fn octal(field: &mut [u8], n: i128) {
    let digits = field.len() - 1;
    debug_assert!(n >= 0 && n < 8i128.pow(digits as u32));
    let mut v = n as u128;
    for slot in field[..digits].iter_mut().rev() {
        *slot = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    field[digits] = 0;
}

/// `s.encode("ascii", "replace")[:len]`, NUL-padded, where `s` is the name as Python decodes it
/// (UTF-8 with surrogateescape): each non-ASCII character, and each undecodable byte, is one `?`.
fn ascii_field(field: &mut [u8], value: &[u8]) {
    let mut i = 0;
    let mut push = |b: u8| {
        if i < field.len() {
            field[i] = b;
            i += 1;
        }
    };
    if value.is_ascii() {
        for &b in value {
            push(b);
        }
        return;
    }
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            push(if c.is_ascii() { c as u8 } else { b'?' });
        }
        for _ in chunk.invalid() {
            push(b'?');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(spec: &HeaderSpec<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(spec, &mut out);
        out
    }

    #[test]
    fn short_entry_is_one_ustar_block_with_a_valid_checksum() {
        let h = header(&HeaderSpec {
            name: b"etc/",
            typeflag: DIRTYPE,
            mode: 0o755,
            ..Default::default()
        });
        assert_eq!(h.len(), BLOCK);
        assert_eq!(&h[0..4], b"etc/");
        assert_eq!(&h[100..108], b"0000755\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        let mut check = h.clone();
        check[148..156].copy_from_slice(b"        ");
        let sum: u32 = check.iter().map(|&b| b as u32).sum();
        assert_eq!(&h[148..156], format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(&h[329..345], &[0u8; 16]);
    }

    #[test]
    fn a_name_of_exactly_100_bytes_fits_without_pax() {
        let name = vec![b'a'; 100];
        let h = header(&HeaderSpec {
            name: &name,
            typeflag: REGTYPE,
            ..Default::default()
        });
        assert_eq!(h.len(), BLOCK);
        let name = vec![b'a'; 101];
        let h = header(&HeaderSpec {
            name: &name,
            typeflag: REGTYPE,
            ..Default::default()
        });
        assert_eq!(h.len(), 3 * BLOCK);
        assert_eq!(&h[0..14], b"././@PaxHeader");
        assert_eq!(h[156], XHDTYPE);
        assert!(h[BLOCK..].starts_with(b"111 path=aaaa"));
    }

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        let r = pax_records(&[(b"ab".to_vec(), b"cd".to_vec())]);
        assert_eq!(r, b"8 ab=cd\n");
        let r = pax_records(&[(b"k".to_vec(), vec![b'v'; 5])]);
        assert_eq!(r, b"11 k=vvvvv\n");
    }

    #[test]
    fn binary_values_switch_the_records_to_hdrcharset_binary() {
        let xattrs = vec![("user.x".to_string(), vec![0xff, 0x00])];
        let h = header(&HeaderSpec {
            name: b"f",
            typeflag: REGTYPE,
            xattrs: &xattrs,
            ..Default::default()
        });
        assert!(h[BLOCK..].starts_with(b"21 hdrcharset=BINARY\n"));
    }

    #[test]
    fn non_ascii_names_are_replaced_per_character_in_the_ustar_field() {
        let h = header(&HeaderSpec {
            name: "é\u{1F600}x".as_bytes(),
            typeflag: REGTYPE,
            ..Default::default()
        });
        let ustar = &h[h.len() - BLOCK..];
        assert_eq!(&ustar[0..4], b"??x\0");
        let h = header(&HeaderSpec {
            name: b"caf\xe9",
            typeflag: REGTYPE,
            ..Default::default()
        });
        let ustar = &h[h.len() - BLOCK..];
        assert_eq!(&ustar[0..5], b"caf?\0");
        assert!(h[BLOCK..].starts_with(b"21 hdrcharset=BINARY\n13 path=caf\xe9\n"));
    }

    #[test]
    fn huge_sizes_and_negative_mtimes_go_to_pax() {
        let h = header(&HeaderSpec {
            name: b"big",
            typeflag: REGTYPE,
            size: 8 << 30,
            mtime: -1,
            ..Default::default()
        });
        assert!(h[BLOCK..].starts_with(b"19 size=8589934592\n12 mtime=-1\n"));
        let ustar = &h[h.len() - BLOCK..];
        assert_eq!(&ustar[124..136], b"00000000000\0");
        assert_eq!(&ustar[136..148], b"00000000000\0");
    }

    #[test]
    fn device_fields_are_written_only_for_devices() {
        let h = header(&HeaderSpec {
            name: b"dev/null",
            typeflag: CHRTYPE,
            devmajor: 1,
            devminor: 3,
            ..Default::default()
        });
        assert_eq!(&h[329..337], b"0000001\0");
        assert_eq!(&h[337..345], b"0000003\0");
    }
}
