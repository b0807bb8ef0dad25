use super::*;
use std::os::unix::fs::PermissionsExt;

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn writes_the_content_with_the_mode_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    write_atomic(&path, b"secret", 0o600).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(names(dir.path()), ["token"]);
}

#[test]
fn replaces_an_existing_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.json");
    std::fs::write(&path, "a much longer old content").unwrap();
    write_atomic(&path, b"new", 0o600).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(mode_of(&path), 0o600, "the new file's mode, not the replaced one's");
    write_atomic(&path, b"newer", 0o600).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"newer");
    assert_eq!(names(dir.path()), ["meta.json"]);
}

#[test]
fn a_failed_write_leaves_the_old_file_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    // Renaming a file over a non-empty directory fails after the temp file was written.
    let path = dir.path().join("occupied");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("inside"), "x").unwrap();
    assert!(write_atomic(&path, b"new", 0o600).is_err());
    assert!(path.is_dir());
    assert_eq!(names(dir.path()), ["occupied"]);
}

#[test]
fn stale_temps_of_one_file_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let (stale, _file) = create_temp(&path, 0o644).unwrap();
    assert!(stale.file_name().unwrap().to_str().unwrap().starts_with(".journal."));
    for keep in ["journal", "journal.next", ".other.1-0.tmp", ".journal.keep"] {
        std::fs::write(dir.path().join(keep), "x").unwrap();
    }
    assert_eq!(remove_stale_temps(&path).unwrap(), 1);
    assert_eq!(names(dir.path()), [".journal.keep", ".other.1-0.tmp", "journal", "journal.next"]);
}

#[test]
fn a_bare_file_name_lives_in_the_current_directory() {
    assert_eq!(parent(Path::new("token")), Path::new("."));
    assert_eq!(parent(Path::new("/run/x/token")), Path::new("/run/x"));
}

#[test]
fn replace_atomic_writes_the_content_with_the_mode_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j1.token");
    replace_atomic(&path, b"tok", 0o600).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"tok");
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(names(dir.path()), ["j1.token"]);
}

#[test]
fn replace_atomic_replaces_an_existing_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ready.json");
    std::fs::write(&path, "a much longer old content").unwrap();
    replace_atomic(&path, b"new", 0o600).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(mode_of(&path), 0o600, "the new file's mode, not the replaced one's");
    assert_eq!(names(dir.path()), ["ready.json"]);
}

#[test]
fn a_failed_replace_leaves_the_old_file_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("occupied");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("inside"), "x").unwrap();
    assert!(replace_atomic(&path, b"new", 0o600).is_err());
    assert!(path.is_dir());
    assert_eq!(names(dir.path()), ["occupied"]);
}

#[test]
fn a_reader_never_sees_half_a_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ready.json");
    let (short, long) = (vec![b'a'; 10], vec![b'b'; 1 << 20]);
    replace_atomic(&path, &short, 0o644).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (path, stop, short, long) = (path.clone(), stop.clone(), short.clone(), long.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                let seen = std::fs::read(&path).unwrap();
                assert!(seen == short || seen == long, "half a file: {} bytes", seen.len());
            }
        }
    });
    for i in 0..50 {
        replace_atomic(&path, if i % 2 == 0 { &long } else { &short }, 0o644).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(names(dir.path()), ["ready.json"]);
}

#[test]
fn remove_temps_in_removes_only_leftover_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in [".j1.json.123-0.tmp", ".j2.token.9-41.tmp"] {
        std::fs::write(d.join(name), b"half").unwrap();
    }
    // Ordinary files, including ones that look almost like temp files, stay.
    for name in ["j1.json", "j1.json.tmp", ".hidden", ".x.abc-1.tmp", ".x.1-.tmp", "..1-2.tmp"] {
        std::fs::write(d.join(name), b"keep").unwrap();
    }
    assert_eq!(remove_temps_in(d).unwrap(), 2);
    let mut left: Vec<String> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["..1-2.tmp", ".hidden", ".x.1-.tmp", ".x.abc-1.tmp", "j1.json", "j1.json.tmp"]);
}

#[test]
fn a_temp_name_from_create_temp_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ready.json");
    let (tmp, _file) = create_temp(&target, 0o600).unwrap();
    assert_eq!(temp_target(tmp.file_name().unwrap().to_str().unwrap()), Some("ready.json"), "{}", tmp.display());
}
