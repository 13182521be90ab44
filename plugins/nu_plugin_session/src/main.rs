use nu_plugin::serve_plugin;
use nu_plugin_session::SessionPlugin;
use nu_plugin_session::encoding::CompactMsgPack;

fn main() {
    serve_plugin(&SessionPlugin::default(), CompactMsgPack)
}
