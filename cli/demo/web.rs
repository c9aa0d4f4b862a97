//! The demo image's one program (`skiff dev --demo`): a small static web
//! server on port 8080 that answers with the node, site and allocation it
//! runs on (the `SKIFF_*` variables every agent gives its containers) and
//! logs each request; `GET /exit` makes it answer and exit (status 1), to
//! show a restart. `web --whoami` prints the same line and exits, `web
//! --exit N` exits with N (for `skiff exec`). Built by `cli/build.rs` with
//! std only, linked statically.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn whoami() -> String {
    let v = |k: &str| std::env::var(k).unwrap_or_else(|_| "?".into());
    format!(
        "hello from skiff: node {} site {} allocation {}\n",
        v("SKIFF_NODE"),
        v("SKIFF_SITE"),
        v("SKIFF_ALLOCATION")
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--whoami") => {
            print!("{}", whoami());
            return;
        }
        Some("--exit") => {
            let code = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(0);
            std::process::exit(code);
        }
        _ => {}
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("web: listen on {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("web: listening on :{port}; {}", whoami().trim_end());
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = String::new();
        let _ = BufReader::new(&stream).read_line(&mut request);
        let body = whoami();
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        println!("web: {}", request.trim_end());
        if request.starts_with("GET /exit ") {
            println!("web: exiting, as asked");
            std::process::exit(1);
        }
    }
}
