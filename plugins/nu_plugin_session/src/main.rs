use nu_plugin::{MsgPackSerializer, serve_plugin};
use nu_plugin_session::SessionPlugin;

fn main() {
    serve_plugin(&SessionPlugin::default(), MsgPackSerializer)
}
