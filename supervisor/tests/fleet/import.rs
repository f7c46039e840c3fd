//! `supervisor import` as users run it: the real binary on a real SQLite file. Every
//! line of the file is accounted for, bad input is one clear error with exit code 2, and
//! a refused file changes nothing.

use std::path::{Path, PathBuf};
use std::process::Output;

use shared::status::VideoStatus;
use testkit::{TestDb, supervisor, text};

/// A test database holding videos 1 and 2, and the import file `name` written next to it.
struct Case {
    t: TestDb,
    file: PathBuf,
}

impl Case {
    async fn new(name: &str, content: impl AsRef<[u8]>) -> Case {
        let t = TestDb::new().await;
        t.seed(2).await;
        let file = t.dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        Case { t, file }
    }

    fn import(&self, extra: &[&str]) -> Output {
        import(self.t.dir.path(), &self.file, &self.t.path, extra)
    }

    /// Runs the import, expects it refused as bad input, and checks that nothing changed.
    async fn refused(&self, extra: &[&str]) -> String {
        let out = self.import(extra);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{all}");
        assert!(!all.contains("panicked"), "{all}");
        assert_eq!(self.t.db.count_videos().await.unwrap(), 2, "nothing was imported: {all}");
        all
    }

    async fn ids(&self) -> Vec<i64> {
        self.t.videos().await.iter().map(|v| v.video_id).collect()
    }
}

fn import(dir: &Path, file: &Path, db: &Path, extra: &[&str]) -> Output {
    supervisor(dir).arg("import").arg(file).arg("--db").arg(db).args(extra).output().expect("supervisor runs")
}

#[tokio::test]
async fn an_import_with_a_bad_line_seven_imports_nothing() {
    let t = TestDb::new().await;
    t.seed(2).await;
    let file = t.dir.path().join("videos.csv");
    let mut csv = String::from("video_id,source\n");
    for i in 10..15 {
        csv.push_str(&format!("{i},src-{i}\n"));
    }
    csv.push_str("oops,src\n"); // line 7
    std::fs::write(&file, csv).unwrap();
    let out = supervisor(t.dir.path()).args(["import"]).arg(&file).arg("--db").arg(&t.path).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("has 1 bad line; nothing was imported"), "{all}");
    assert!(all.contains("line 7: video_id \"oops\" is not an integer"), "{all}");
    assert_eq!(t.db.count_videos().await.unwrap(), 2, "the database is unchanged");
}

#[tokio::test]
async fn a_quote_that_never_closes_is_an_error_and_the_rows_after_it_are_not_swallowed() {
    let c = Case::new("v.csv", "video_id,source\n10,a.mp4\n11,b.mp4\n3,\"c.mp4\n12,d.mp4\n13,e.mp4\n").await;
    let all = c.refused(&[]).await;
    assert!(all.contains("has 1 bad line; nothing was imported"), "{all}");
    assert!(all.contains("line 4: a quoted field never closes on this line"), "{all}");

    // A closed quote is still fine, and each row is one line.
    let c = Case::new("v.csv", "video_id,source\n10,\"a,\"\"x\"\".mp4\"\n11,b.mp4\n").await;
    let out = c.import(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("imported 2 videos from"), "{}", text(&out));
    assert_eq!(c.t.video(10).await.status, VideoStatus::Pending);
    assert_eq!(c.t.video(10).await.source.as_deref(), Some("a,\"x\".mp4"));
}

#[tokio::test]
async fn a_source_with_a_control_character_is_refused_by_line_number() {
    let jsonl = "{\"video_id\":10,\"source\":\"a\\nb\"}\n\
                 {\"video_id\":11,\"source\":\"ok.mp4\"}\n\
                 {\"video_id\":12,\"source\":\"nul\\u0000\"}\n\
                 {\"video_id\":13,\"source\":\"bell\\u0007\"}\n\
                 {\"video_id\":14,\"source\":\"del\\u007f\"}\n";
    let c = Case::new("v.jsonl", jsonl).await;
    let all = c.refused(&[]).await;
    assert!(all.contains("has 4 bad lines; nothing was imported"), "{all}");
    for line in [1, 3, 4, 5] {
        assert!(all.contains(&format!("line {line}: source contains the control character")), "line {line}: {all}");
    }
    assert!(all.contains("U+000A"), "{all}");
    assert!(all.contains("U+0000"), "{all}");
    assert!(all.contains("U+007F"), "{all}");

    let c = Case::new("v.csv", "video_id,source\n10,tab\there\n11,cr\rhere\n12,fine\n").await;
    let all = c.refused(&[]).await;
    assert!(all.contains("line 2: source contains the control character U+0009"), "{all}");
    assert!(all.contains("line 3: source contains the control character U+000D"), "{all}");
}

#[tokio::test]
async fn an_oversized_source_or_payload_is_refused_unless_its_limit_is_raised() {
    let big_source = "s".repeat(100 << 10);
    let c = Case::new("v.csv", format!("video_id,source\n10,ok.mp4\n11,{big_source}\n")).await;
    let all = c.refused(&[]).await;
    assert!(all.contains("line 3: source is 102400 bytes, more than --max-source-bytes 64K"), "{all}");
    assert!(all.len() < 2000, "the huge source is not echoed back ({} bytes of output)", all.len());
    let out = c.import(&["--max-source-bytes", "128K"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.ids().await, [1, 2, 10, 11]);

    let big_payload = format!("{{\"\"pad\"\":\"\"{}\"\"}}", "p".repeat(1_200_000));
    let c = Case::new("p.csv", format!("video_id,source,payload\n10,a.mp4,\"{big_payload}\"\n")).await;
    let all = c.refused(&[]).await;
    assert!(all.contains("line 2: payload is 1200010 bytes, more than --max-payload-bytes 1M"), "{all}");
    assert!(all.len() < 2000, "the huge payload is not echoed back ({} bytes of output)", all.len());
    let out = c.import(&["--max-payload-bytes", "2M"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.ids().await, [1, 2, 10]);

    // A line far longer than any row may be is refused without being read into memory.
    let c = Case::new("huge.jsonl", format!("{{\"video_id\":10,\"source\":\"{}\"}}\n", "x".repeat(8 << 20))).await;
    let all = c.refused(&[]).await;
    assert!(all.contains("line 1: the line is 8388635 bytes"), "{all}");
    assert!(all.len() < 2000, "the huge line is not echoed back ({} bytes of output)", all.len());

    let out = c.import(&["--max-source-bytes", "12Q"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("invalid size \"12Q\""), "{}", text(&out));
}

#[tokio::test]
async fn a_long_bad_value_is_shortened_in_the_error() {
    let id = "9".repeat(5000);
    let c = Case::new("v.csv", format!("video_id,source\n{id}x,a.mp4\n")).await;
    let all = c.refused(&[]).await;
    assert!(all.contains("line 2: video_id \"9999999999"), "{all}");
    assert!(all.contains("(5001 bytes)"), "{all}");
    assert!(all.len() < 1000, "{all}");
}

#[tokio::test]
async fn json_lines_with_a_byte_order_mark_import_like_csv_with_one() {
    let c =
        Case::new("v.jsonl", "\u{feff}{\"video_id\":10,\"source\":\"a.mp4\"}\n{\"video_id\":11,\"source\":\"b\"}\n")
            .await;
    let out = c.import(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("imported 2 videos from"), "{}", text(&out));
    // No extension: the format is recognised after the mark too.
    let c = Case::new("v.txt", "\u{feff}{\"video_id\":10,\"source\":\"a.mp4\"}\n").await;
    let out = c.import(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let c = Case::new("v.csv", "\u{feff}video_id,source\n10,a.mp4\n").await;
    let out = c.import(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.ids().await, [1, 2, 10]);
}

#[tokio::test]
async fn every_bad_line_is_counted_after_the_first_and_repeats_are_told_from_ids_already_there() {
    // 2000 good rows (more than one insert batch), then bad ones: a repeat far from its
    // first line, ids already in the database (not an error), and junk.
    let mut csv = String::from("video_id,source\n");
    for i in 10..2010 {
        csv.push_str(&format!("{i},src-{i}\n"));
    }
    csv.push_str("1,again\n"); // line 2002: already in the database, fine
    csv.push_str("10,dup\n"); // line 2003
    for n in 0..25 {
        csv.push_str(&format!("x{n},junk\n")); // lines 2004..2028
    }
    csv.push_str("2009,dup-late\n"); // line 2029
    let c = Case::new("v.csv", csv).await;
    let all = c.refused(&[]).await;
    assert!(all.contains("has 27 bad lines; nothing was imported"), "{all}");
    assert!(all.contains("line 2003: video_id 10 repeats line 2"), "{all}");
    assert!(all.contains("line 2004: video_id \"x0\" is not an integer"), "{all}");
    assert!(all.contains("... and 7 more"), "{all}");
    assert!(!all.contains("video_id 1 repeats"), "{all}");
}

#[tokio::test]
async fn ids_already_there_are_reported_and_left_as_they_are() {
    let c = Case::new("v.csv", "video_id,source\n2,changed\n3,new\n1,changed\n").await;
    let out = c.import(&[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("imported 1 videos from"), "{all}");
    assert!(all.contains("2 were already there and left as they are (video_id 1, 2)"), "{all}");
    assert_eq!(c.t.video(2).await.source.as_deref(), Some("src-2"));
}

#[tokio::test]
async fn a_file_that_is_not_utf8_is_reported_and_no_database_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.csv");
    std::fs::write(&file, b"video_id,source\n10,caf\xe9.mp4\n").unwrap();
    let db = dir.path().join("fleet.db");
    let out = import(dir.path(), &file, &db, &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("line 2: it is not UTF-8 text"), "{all}");
    assert!(!db.exists(), "no database was created");
    for suffix in ["-wal", "-shm", "-journal"] {
        assert!(!dir.path().join(format!("fleet.db{suffix}")).exists(), "no {suffix} file is left");
    }
}

/// Peak resident memory (VmHWM) of a process, in bytes, while it runs.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::test]
async fn a_large_file_is_imported_in_flat_memory() {
    // 100,000 rows with 600-byte sources: a 60 MiB file. Held whole, the file and its
    // rows take well over 100 MiB; streamed, a few batches.
    let t = TestDb::new().await;
    let file = t.dir.path().join("big.csv");
    let mut csv = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    std::io::Write::write_all(&mut csv, b"video_id,source\n").unwrap();
    let pad = "p".repeat(590);
    for i in 0..100_000 {
        std::io::Write::write_all(&mut csv, format!("{i},{pad}/{i:07}\n").as_bytes()).unwrap();
    }
    std::io::Write::flush(&mut csv).unwrap();
    drop(csv);
    let mut child = supervisor(t.dir.path())
        .arg("import")
        .arg(&file)
        .arg("--db")
        .arg(&t.path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak_rss(child.id()).unwrap_or(0).max(peak);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("imported 100000 videos"), "{}", text(&out));
    assert_eq!(t.db.count_videos().await.unwrap(), 100_000);
    assert!(peak < 64 << 20, "peak RSS {} MiB", peak >> 20);
}
