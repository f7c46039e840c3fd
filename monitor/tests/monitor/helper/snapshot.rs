//! A text snapshot kept in `tests/snapshots/NAME.txt`: compared on every run, rewritten
//! when `UPDATE_SNAPSHOTS=1` is set. A mismatch leaves `NAME.txt.new` beside it to diff.

use std::path::PathBuf;

pub fn assert_snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.txt"));
    let new = path.with_extension("txt.new");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        let _ = std::fs::remove_file(&new);
        return;
    }
    let Ok(expected) = std::fs::read_to_string(&path) else {
        std::fs::write(&new, actual).unwrap();
        panic!(
            "no snapshot {}; the drawing is in {}: review it, then rerun with UPDATE_SNAPSHOTS=1",
            path.display(),
            new.display()
        );
    };
    if expected == actual {
        let _ = std::fs::remove_file(&new);
        return;
    }
    std::fs::write(&new, actual).unwrap();
    let diff: Vec<String> = expected
        .lines()
        .zip(actual.lines())
        .enumerate()
        .filter(|(_, (e, a))| e != a)
        .take(8)
        .map(|(i, (e, a))| format!("line {}:\n  expected: {e}\n  actual:   {a}", i + 1))
        .collect();
    panic!(
        "the drawing differs from {} ({} lines expected, {} drawn):\n{}\nfull drawing in {}; rerun with UPDATE_SNAPSHOTS=1 to accept it",
        path.display(),
        expected.lines().count(),
        actual.lines().count(),
        diff.join("\n"),
        new.display()
    );
}
