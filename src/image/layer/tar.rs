//! Byte-level tar header encoding (ustar + PAX), written by hand so that the
//! size of every header is known exactly before anything is streamed and no
//! library default can change a byte underneath us.

pub const BLOCK: u64 = 512;
/// Archives are padded to whole 20-block records, as POSIX tar and nixpkgs do.
const RECORD: u64 = 20 * BLOCK;

#[derive(Clone, Copy)]
pub enum TypeFlag {
    Regular,
    Symlink,
    Dir,
}

impl TypeFlag {
    fn byte(self) -> u8 {
        match self {
            TypeFlag::Regular => b'0',
            TypeFlag::Symlink => b'2',
            TypeFlag::Dir => b'5',
        }
    }
}

pub struct HeaderFields<'a> {
    pub name: &'a [u8],
    pub kind: TypeFlag,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: &'a [u8],
    pub gname: &'a [u8],
    pub size: u64,
    pub mtime: u64,
    pub linkname: &'a [u8],
}

/// Content size rounded up to whole blocks.
pub fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// Total archive size for `body` bytes of entries: two zero blocks, then
/// zero padding to a whole record.
pub fn archive_size(body: u64) -> u64 {
    (body + 2 * BLOCK).div_ceil(RECORD) * RECORD
}

const MAX_OCTAL_7: u64 = 0o7777777; // 7 digits: uid, gid
const MAX_OCTAL_11: u64 = 0o77777777777; // 11 digits: size, mtime

/// The header blocks of one entry: an optional PAX `x` header and its
/// records, then the ustar header.
pub fn header_blocks(f: &HeaderFields) -> Vec<u8> {
    let mut records: Vec<(&str, Vec<u8>)> = Vec::new();
    if f.name.len() > 100 || !f.name.is_ascii() {
        records.push(("path", f.name.to_vec()));
    }
    if f.linkname.len() > 100 || !f.linkname.is_ascii() {
        records.push(("linkpath", f.linkname.to_vec()));
    }
    if f.uname.len() > 32 || !f.uname.is_ascii() {
        records.push(("uname", f.uname.to_vec()));
    }
    if f.gname.len() > 32 || !f.gname.is_ascii() {
        records.push(("gname", f.gname.to_vec()));
    }
    if f.uid > MAX_OCTAL_7 {
        records.push(("uid", f.uid.to_string().into_bytes()));
    }
    if f.gid > MAX_OCTAL_7 {
        records.push(("gid", f.gid.to_string().into_bytes()));
    }
    if f.size > MAX_OCTAL_11 {
        records.push(("size", f.size.to_string().into_bytes()));
    }
    if f.mtime > MAX_OCTAL_11 {
        records.push(("mtime", f.mtime.to_string().into_bytes()));
    }

    let mut out = Vec::with_capacity(3 * BLOCK as usize);
    if !records.is_empty() {
        let mut body = Vec::new();
        // Values that are not UTF-8 (store file names may hold any bytes)
        // must be declared binary, or readers would reject the record.
        if records.iter().any(|(_, v)| std::str::from_utf8(v).is_err()) {
            push_record(&mut body, "hdrcharset", b"BINARY");
        }
        for (k, v) in &records {
            push_record(&mut body, k, v);
        }
        out.extend_from_slice(&ustar(
            &HeaderFields {
                name: b"././@PaxHeader",
                kind: TypeFlag::Regular,
                mode: 0,
                uid: 0,
                gid: 0,
                uname: b"",
                gname: b"",
                size: body.len() as u64,
                mtime: 0,
                linkname: b"",
            },
            b'x',
        ));
        let len = body.len() as u64;
        out.extend_from_slice(&body);
        out.resize(out.len() + (padded(len) - len) as usize, 0);
    }
    out.extend_from_slice(&ustar(f, f.kind.byte()));
    out
}

/// `"<len> key=value\n"` where `len` counts the whole record, itself included.
fn push_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn ustar(f: &HeaderFields, typeflag: u8) -> [u8; BLOCK as usize] {
    let mut h = [0u8; BLOCK as usize];
    put_str(&mut h[0..100], f.name);
    put_octal(&mut h[100..108], f.mode as u64);
    put_octal(&mut h[108..116], f.uid);
    put_octal(&mut h[116..124], f.gid);
    put_octal(&mut h[124..136], f.size);
    put_octal(&mut h[136..148], f.mtime);
    h[156] = typeflag;
    put_str(&mut h[157..257], f.linkname);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put_str(&mut h[265..297], f.uname);
    put_str(&mut h[297..329], f.gname);
    put_octal(&mut h[329..337], 0);
    put_octal(&mut h[337..345], 0);
    // Checksum: byte sum with the checksum field itself counted as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A string field: truncated to fit, non-ASCII bytes shown as `?` (the full
/// value is then in a PAX record).
fn put_str(field: &mut [u8], value: &[u8]) {
    for (dst, &b) in field.iter_mut().zip(value) {
        *dst = if b.is_ascii() { b } else { b'?' };
    }
}

/// Zero-padded octal and a NUL; 0 when the value does not fit (a PAX record
/// carries it then).
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let max = (1u64 << (3 * digits as u32)) - 1;
    let v = if value > max { 0 } else { value };
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}
