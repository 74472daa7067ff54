//! What a configuration names on this machine: the file itself, the fence program and the
//! key file. Apart from [`super::parse`], which stays pure: these answers depend on the
//! machine that asks.
use std::{
    ffi::OsStr,
    fmt,
    fs::{self, File, FileType},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// The most `takeover` reads of a configuration or key file: a real one is a few KiB, and a
/// bound keeps `/dev/zero` or `/proc/kcore` given by mistake from eating the memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Keys shorter than this are refused: HMAC-SHA256 wants at least 128 bits of secret.
pub const MIN_KEY_BYTES: u64 = 16;

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// What it is instead: "a directory", "a named pipe (FIFO)", ...
    NotRegular(&'static str),
    TooLarge,
    NotUtf8 {
        line: usize,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            ReadError::TooLarge => write!(f, "it is larger than the limit of 1 MiB"),
            ReadError::NotUtf8 { line } => write!(f, "line {line} is not UTF-8 text"),
        }
    }
}

impl std::error::Error for ReadError {}

fn kind(t: FileType) -> &'static str {
    match t {
        _ if t.is_dir() => "a directory",
        _ if t.is_fifo() => "a named pipe (FIFO)",
        _ if t.is_char_device() => "a character device",
        _ if t.is_block_device() => "a block device",
        _ if t.is_socket() => "a socket",
        _ => "not a regular file",
    }
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`]; anything else is refused without
/// blocking (a FIFO with no writer) or reading without end (a device).
pub fn read_regular(path: &Path) -> Result<Vec<u8>, ReadError> {
    // Refuse by the path first, so a device is not even opened (opening some has effects).
    let t = fs::metadata(path).map_err(ReadError::Io)?.file_type();
    if !t.is_file() {
        return Err(ReadError::NotRegular(kind(t)));
    }
    read_opened(open_regular(path)?)
}

/// Opens without blocking and checks what was opened: the path may have been replaced by
/// a FIFO or a device since it was looked at.
fn open_regular(path: &Path) -> Result<File, ReadError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(meta.file_type())));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(file)
}

/// Reads one byte past the bound: sizes can lie (procfs) or grow while read.
fn read_opened(file: File) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

/// A configuration file's text.
pub fn read_config(path: &Path) -> Result<String, ReadError> {
    String::from_utf8(read_regular(path)?).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        ReadError::NotUtf8 {
            line: good.iter().filter(|b| **b == b'\n').count() + 1,
        }
    })
}

/// Why a program (`fence.command`'s first word) cannot be run.
#[derive(Debug, PartialEq, Eq)]
pub enum ProgramError {
    Missing(PathBuf),
    NotInPath { name: String, path: String },
    NotRegular(PathBuf, &'static str),
    NotExecutable(PathBuf, u32),
    Unreadable(PathBuf, String),
}

impl fmt::Display for ProgramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgramError::Missing(p) => write!(f, "{} does not exist", p.display()),
            ProgramError::NotInPath { name, path } => {
                write!(f, "{name:?} is not in PATH ({path}); give its full path")
            }
            ProgramError::NotRegular(p, kind) => {
                write!(f, "{} is {kind}, not a program", p.display())
            }
            ProgramError::NotExecutable(p, mode) => write!(
                f,
                "{} is not executable (mode {mode:o}); chmod +x it",
                p.display()
            ),
            ProgramError::Unreadable(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for ProgramError {}

/// What execvp searches when PATH is unset (glibc's default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The program `name` runs as, found as `std::process::Command` would: a name with a slash
/// as it is, else the first executable file of that name in `path_var` (PATH).
pub fn find_program(name: &str, path_var: Option<&OsStr>) -> Result<PathBuf, ProgramError> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).map(|()| p);
    }
    let path = path_var.unwrap_or(OsStr::new(DEFAULT_PATH));
    let mut first_problem = None;
    for dir in std::env::split_paths(path) {
        // An empty PATH entry means the current directory.
        let candidate = if dir.as_os_str().is_empty() {
            PathBuf::from(".").join(name)
        } else {
            dir.join(name)
        };
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(ProgramError::Missing(_)) => {}
            Err(e) => {
                first_problem.get_or_insert(e);
            }
        }
    }
    // A file of that name that cannot run says more than "not found".
    Err(first_problem.unwrap_or_else(|| ProgramError::NotInPath {
        name: name.to_string(),
        path: path.to_string_lossy().into_owned(),
    }))
}

/// A regular file with an execute bit: the agent runs as root, for whom any bit will do.
fn executable(p: &Path) -> Result<(), ProgramError> {
    let meta = match fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ProgramError::Missing(p.to_path_buf()))
        }
        Err(e) => return Err(ProgramError::Unreadable(p.to_path_buf(), e.to_string())),
    };
    if !meta.is_file() {
        return Err(ProgramError::NotRegular(
            p.to_path_buf(),
            kind(meta.file_type()),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o111 == 0 {
        return Err(ProgramError::NotExecutable(p.to_path_buf(), mode));
    }
    Ok(())
}

/// Why the key file is not fit for `takeover run`.
#[derive(Debug)]
pub enum KeyProblem {
    Unreadable(PathBuf, io::Error),
    NotRegular(PathBuf, &'static str),
    Short(PathBuf, u64),
    Exposed(PathBuf, u32),
}

impl KeyProblem {
    /// Wrong wherever the path exists, so `check-config` refuses it too; the others may
    /// well be fine on the nodes, where the key lives (check-config warns about them).
    pub fn wrong_anywhere(&self) -> bool {
        matches!(self, KeyProblem::NotRegular(..))
    }
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Unreadable(p, e) => write!(
                f,
                "auth.key_file {}: {e} (takeover run needs it)",
                p.display()
            ),
            KeyProblem::NotRegular(p, kind) => write!(
                f,
                "auth.key_file {} is {kind}, not a regular file: point it at the key itself",
                p.display()
            ),
            KeyProblem::Short(p, n) => write!(
                f,
                "auth.key_file {} holds {n} bytes; use at least {MIN_KEY_BYTES} random bytes",
                p.display()
            ),
            KeyProblem::Exposed(p, mode) => write!(
                f,
                "auth.key_file {} is readable by others (mode {mode:o}); chmod 600 it",
                p.display()
            ),
        }
    }
}

/// The first problem with the key file at `path`, if any.
pub fn check_key_file(path: &Path) -> Result<(), KeyProblem> {
    let p = || path.to_path_buf();
    let meta = fs::metadata(path).map_err(|e| KeyProblem::Unreadable(p(), e))?;
    if !meta.is_file() {
        return Err(KeyProblem::NotRegular(p(), kind(meta.file_type())));
    }
    if meta.len() < MIN_KEY_BYTES {
        return Err(KeyProblem::Short(p(), meta.len()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyProblem::Exposed(p(), mode & 0o777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{ffi::CString, os::unix::ffi::OsStrExt};

    /// A fresh directory for one test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("takeover-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Self(d)
        }

        fn file(&self, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, bytes).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }

        fn fifo(&self, name: &str) -> PathBuf {
            let p = self.0.join(name);
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn not_regular(r: Result<impl fmt::Debug, ReadError>) -> &'static str {
        match r {
            Err(ReadError::NotRegular(k)) => k,
            other => panic!("expected NotRegular, got {other:?}"),
        }
    }

    #[test]
    fn only_regular_files_are_read() {
        let d = TempDir::new("read-kinds");
        let fifo = d.fifo("fifo");
        assert_eq!(not_regular(read_config(&fifo)), "a named pipe (FIFO)");
        assert_eq!(
            not_regular(read_config(Path::new("/dev/zero"))),
            "a character device"
        );
        assert_eq!(not_regular(read_config(&d.0)), "a directory");
        let text = d.file("ok.toml", b"[node]\n", 0o644);
        assert_eq!(read_config(&text).unwrap(), "[node]\n");
        assert!(matches!(
            read_config(&d.0.join("absent")),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn a_fifo_swapped_in_after_the_look_is_refused_without_blocking() {
        // The open itself: a FIFO with no writer must neither block it nor be read.
        let d = TempDir::new("read-race");
        let fifo = d.fifo("fifo");
        assert_eq!(not_regular(open_regular(&fifo)), "a named pipe (FIFO)");
    }

    #[test]
    fn reads_are_bounded() {
        let d = TempDir::new("read-bound");
        let max = d.file("max", &vec![b'#'; MAX_FILE_BYTES as usize], 0o644);
        assert_eq!(read_config(&max).unwrap().len() as u64, MAX_FILE_BYTES);
        let over = d.file("over", &vec![b'#'; MAX_FILE_BYTES as usize + 1], 0o644);
        let e = read_config(&over).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge), "{e:?}");
        assert!(e.to_string().contains("1 MiB"), "{e}");
        // A size that lies (as procfs's do) is caught by the read itself.
        let f = File::open("/dev/zero").unwrap();
        assert!(matches!(read_opened(f), Err(ReadError::TooLarge)));
    }

    #[test]
    fn text_that_is_not_utf8_names_its_line() {
        let d = TempDir::new("read-utf8");
        let p = d.file("latin1", b"[node]\nname = \"\xe9\"\n", 0o644);
        assert!(matches!(
            read_config(&p),
            Err(ReadError::NotUtf8 { line: 2 })
        ));
    }

    #[test]
    fn programs_are_found_as_exec_finds_them() {
        let d = TempDir::new("program");
        let run = d.file("fence", b"#!/bin/sh\n", 0o755);
        let plain = d.file("plain", b"#!/bin/sh\n", 0o644);
        let dir = d.0.as_os_str();
        assert_eq!(find_program(run.to_str().unwrap(), None), Ok(run.clone()));
        let path = std::env::join_paths([Path::new("/nonexistent"), &d.0]).unwrap();
        assert_eq!(find_program("fence", Some(&path)), Ok(run));
        assert_eq!(
            find_program("no-such-fence", Some(&path)),
            Err(ProgramError::NotInPath {
                name: "no-such-fence".into(),
                path: path.to_string_lossy().into_owned()
            })
        );
        assert_eq!(
            find_program("plain", Some(dir)),
            Err(ProgramError::NotExecutable(plain.clone(), 0o644))
        );
        assert_eq!(
            find_program(plain.to_str().unwrap(), None),
            Err(ProgramError::NotExecutable(plain, 0o644))
        );
        assert_eq!(
            find_program(d.0.to_str().unwrap(), None),
            Err(ProgramError::NotRegular(d.0.clone(), "a directory"))
        );
        let absent = d.0.join("absent");
        assert_eq!(
            find_program(absent.to_str().unwrap(), None),
            Err(ProgramError::Missing(absent))
        );
    }

    #[test]
    fn a_key_file_that_is_not_a_file_is_wrong_anywhere() {
        let d = TempDir::new("key");
        let e = check_key_file(&d.0).unwrap_err();
        assert!(e.wrong_anywhere(), "{e}");
        assert!(e.to_string().contains("is a directory, not a regular file"));
        let e = check_key_file(&d.fifo("fifo")).unwrap_err();
        assert!(e.wrong_anywhere() && e.to_string().contains("FIFO"), "{e}");
        // Missing, short or exposed: maybe not on this machine, but run refuses them.
        let e = check_key_file(&d.0.join("absent")).unwrap_err();
        assert!(!e.wrong_anywhere(), "{e}");
        let e = check_key_file(&d.file("short", b"123", 0o600)).unwrap_err();
        assert!(matches!(e, KeyProblem::Short(_, 3)), "{e}");
        let e = check_key_file(&d.file("open", &[7; 32], 0o644)).unwrap_err();
        assert!(matches!(e, KeyProblem::Exposed(_, 0o644)), "{e}");
        assert!(check_key_file(&d.file("good", &[7; 32], 0o600)).is_ok());
    }
}
