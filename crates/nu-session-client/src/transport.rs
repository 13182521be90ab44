//! How a client reaches a host's manager and session workers, and the hello on every connection.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use nu_session_protocol::layout::Layout;
use nu_session_protocol::{
    ClientMessage, ErrorKind, FrameCodec, Hello, HostMessage, PROTOCOL_VERSION, RemoteError,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use uuid::Uuid;

use crate::ClientError;
use crate::ssh::SshLink;

/// Any byte stream a host can be spoken to over.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Framed messages to and from a host's manager or one of its sessions, after the hello (over
/// a Unix socket here, an SSH channel to a remote host). Not to be confused with
/// [`crate::ssh::SshConnection`], the SSH connection such channels are opened on.
pub type Wire = Framed<Pin<Box<dyn Stream>>, FrameCodec<HostMessage, ClientMessage>>;

/// Names the program clients start when no manager runs (`NU_SESSION_HOST` overrides the search).
pub const HOST_PROGRAM_ENV: &str = "NU_SESSION_HOST";

#[derive(Clone)]
pub enum Transport {
    /// This machine's host, over its Unix sockets. `program` is the `nu-session-host` to start
    /// when no manager runs (found by [`host_program`] when `None`).
    Local {
        layout: Layout,
        program: Option<PathBuf>,
    },
    /// A remote host over SSH (see [`SshLink`]).
    Ssh(Arc<SshLink>),
}

impl Transport {
    pub fn local(layout: Layout, program: Option<PathBuf>) -> Self {
        Transport::Local { layout, program }
    }

    /// Whether the host itself answers right now: always for this machine, for SSH while the
    /// connection is up. A session that cannot be attached on a host that answers may be gone.
    pub(crate) fn host_answers(&self) -> bool {
        match self {
            Transport::Local { .. } => true,
            Transport::Ssh(link) => link.is_up(),
        }
    }

    /// A connection to the manager, started if it does not run yet, after the hello (returned
    /// too: the manager's says what the user should know about the host).
    pub(crate) async fn connect_manager(&self) -> Result<(Wire, Hello), ClientError> {
        match self {
            Transport::Ssh(link) => link.open(None).await,
            Transport::Local { layout, program } => {
                layout
                    .ensure_private()
                    .map_err(|e| ClientError::transport("unsafe runtime directory", e))?;
                let socket = layout.manager_socket();
                let stream = match UnixStream::connect(&socket).await {
                    Ok(stream) => stream,
                    Err(_) => {
                        start_manager(layout, program.clone()).await?;
                        connect_with_retry(&socket).await?
                    }
                };
                hello(Box::pin(stream)).await
            }
        }
    }

    /// A connection to a session's worker, after the hello.
    pub(crate) async fn connect_session(&self, id: Uuid) -> Result<Wire, ClientError> {
        match self {
            Transport::Ssh(link) => Ok(link.open(Some(id)).await?.0),
            Transport::Local { layout, .. } => {
                layout
                    .check_private()
                    .map_err(|e| ClientError::transport("unsafe runtime directory", e))?;
                let stream = UnixStream::connect(layout.session_socket(id))
                    .await
                    .map_err(|e| ClientError::transport("cannot reach the session", e))?;
                Ok(hello(Box::pin(stream)).await?.0)
            }
        }
    }
}

/// Greets the host on a new connection; its hello in return.
pub(crate) async fn hello(stream: Pin<Box<dyn Stream>>) -> Result<(Wire, Hello), ClientError> {
    let mut conn = Framed::new(stream, FrameCodec::new());
    conn.send(ClientMessage::Hello(Hello::current()))
        .await
        .map_err(|e| ClientError::transport("cannot greet the host", e))?;
    match conn.next().await {
        Some(Ok(HostMessage::Hello(hello))) if hello.protocol_version == PROTOCOL_VERSION => {
            Ok((conn, hello))
        }
        // A host must refuse another protocol; one that answers with its own is refused here.
        Some(Ok(HostMessage::Hello(hello))) => Err(RemoteError::new(
            ErrorKind::Version,
            format!(
                "the host speaks protocol {} (nu-session-host {}), this client protocol {PROTOCOL_VERSION} ({})",
                hello.protocol_version,
                crate::text::printable(&hello.software_version),
                nu_session_protocol::SOFTWARE_VERSION
            ),
        )
        .with_help("install the same version of nu_plugin_session and nu-session-host")
        .into()),
        Some(Ok(HostMessage::Error(e))) => Err(e.into()),
        Some(Ok(other)) => {
            let shown = format!("{other:?}");
            let shown: String = crate::text::printable(&shown).chars().take(200).collect();
            Err(ClientError::transport("unexpected answer to hello", shown))
        }
        Some(Err(e)) => Err(ClientError::transport("bad answer to hello", e)),
        None => Err(ClientError::transport(
            "the host closed the connection",
            "no hello",
        )),
    }
}

async fn connect_with_retry(socket: &std::path::Path) -> Result<UnixStream, ClientError> {
    let mut last = None;
    for _ in 0..500 {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(ClientError::transport(
        "the session manager did not start",
        last.map_or_else(|| "timed out".to_string(), |e| e.to_string()),
    ))
}

async fn start_manager(layout: &Layout, program: Option<PathBuf>) -> Result<(), ClientError> {
    let program = program.or_else(host_program).ok_or_else(|| {
        ClientError::transport(
            "cannot find the nu-session-host program",
            "not next to this plugin, not on PATH, and NU_SESSION_HOST is not set",
        )
        .with_help("install it with `cargo install --path crates/nu-session-host` from the nu-session sources, or set NU_SESSION_HOST to its path")
    })?;
    let status = tokio::process::Command::new(&program)
        .args(["manager", "--daemon", "--dir"])
        .arg(layout.base())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| ClientError::transport(&format!("cannot run {}", program.display()), e))?;
    if !status.success() {
        return Err(ClientError::transport(
            &format!("{} manager --daemon failed", program.display()),
            status,
        ));
    }
    Ok(())
}

/// `$NU_SESSION_HOST`, else `nu-session-host` next to this executable, else on `PATH`.
pub fn host_program() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(HOST_PROGRAM_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let name = "nu-session-host";
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    if let Some(sibling) = sibling.filter(|p| p.is_file()) {
        return Some(sibling);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::transport("I/O error", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that answers the hello with `answer`; what the client's hello gives.
    fn greeted_by(answer: HostMessage) -> Result<Hello, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, host) = tokio::io::duplex(64 * 1024);
            let host = tokio::spawn(async move {
                let mut host = Framed::new(host, FrameCodec::<ClientMessage, HostMessage>::new());
                let _ = host.next().await;
                host.send(answer).await.unwrap();
                host
            });
            let greeted = hello(Box::pin(client)).await.map(|(_, hello)| hello);
            drop(host.await);
            greeted
        })
    }

    #[test]
    fn a_host_of_another_protocol_is_refused_naming_both() {
        let mut theirs = Hello::current();
        theirs.protocol_version = PROTOCOL_VERSION + 1;
        theirs.software_version = "9.9.9\x1b[2J".into();
        let error = greeted_by(HostMessage::Hello(theirs)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains(&format!("protocol {}", PROTOCOL_VERSION + 1))
                && text.contains(&format!("protocol {PROTOCOL_VERSION}")),
            "{text}"
        );
        assert!(
            !text.contains('\x1b'),
            "the host's text is shown inert: {text:?}"
        );
        assert_eq!(error.kind(), ErrorKind::Version);
        assert!(greeted_by(HostMessage::Hello(Hello::current())).is_ok());
    }
}
