//! `bufring proxy-tokio` (hidden): the baseline the proxy is measured against, a plain tokio
//! proxy that runs `copy_bidirectional` for each connection. Same flags where they apply.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional_with_sizes;
use tokio::net::{TcpListener, TcpStream};

/// Options of `bufring proxy-tokio`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to accept clients on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward every connection to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Copy buffer per direction and connection, in bytes (tokio's default is 8 KiB).
    #[arg(long, default_value_t = 64 * 1024)]
    buf_size: usize,
}

pub fn run(args: Args) -> crate::CliResult {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_io().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        eprintln!(
            "bufring proxy-tokio: listening on {}, upstream {}, copy buffers {} bytes",
            listener.local_addr()?,
            args.upstream,
            args.buf_size
        );
        loop {
            let (mut client, _) = listener.accept().await?;
            let (upstream, size) = (args.upstream, args.buf_size);
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = server.set_nodelay(true);
                let _ = copy_bidirectional_with_sizes(&mut client, &mut server, size, size).await;
            });
        }
    })
}
